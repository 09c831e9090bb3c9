"""`convnet info` for an ONNX model: inputs, outputs, metadata, opsets and a count of its operators and
weights. Needs the `onnx` package (the `export` extra); external weight files are not read."""
from __future__ import annotations

import os
from collections import Counter

from convnet_cli.errors import ConfigError, DataError


def _onnx():
    try:
        import onnx
    except ImportError:
        return None
    return onnx


def _dtype_name(onnx, elem_type: int) -> str:
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # UNDEFINED, strings, and types numpy lacks (bfloat16, float8 ...)
        try:
            return onnx.TensorProto.DataType.Name(elem_type).lower()
        except ValueError:
            return f"type {elem_type}"


def _value_info(onnx, v) -> dict:
    t = v.type
    kind = t.WhichOneof("value")
    out = {"name": v.name, "type": None, "shape": None}
    if kind == "tensor_type":
        out["type"] = _dtype_name(onnx, t.tensor_type.elem_type)
        if t.tensor_type.HasField("shape"):
            out["shape"] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in t.tensor_type.shape.dim]
    elif kind:
        out["type"] = kind.replace("_type", "")
    if v.doc_string:
        out["doc"] = v.doc_string
    return out


def describe_onnx(path: str) -> dict:
    onnx = _onnx()
    if onnx is None:
        raise ConfigError(f"{path}: reading an ONNX model needs the onnx package; install the export extra: "
                          "pip install 'convnet[export]'")
    try:
        model = onnx.load(path, load_external_data=False)
    except MemoryError:
        raise
    except Exception as exc:  # google.protobuf DecodeError for truncated or foreign bytes, OSError ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable ONNX model ({reason}); export it again with convnet export") \
            from None
    g = model.graph
    if model.ir_version == 0 or not (g.input or g.output or g.node):
        raise DataError(f"{path}: not an ONNX model (no IR version, inputs, outputs or nodes); "
                        "export it again with convnet export")
    init_names = {t.name for t in g.initializer}
    external = sorted({e.value for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                       for e in t.external_data if e.key == "location"})
    weights = 0
    for t in g.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        weights += n
    return {
        "kind": "onnx",
        "path": path,
        "bytes": os.path.getsize(path),
        "ir_version": int(model.ir_version),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p) or None,
        "doc": model.doc_string or None,
        "graph": g.name or None,
        # graphs before IR 4 list their weights as inputs too; those are not inputs a caller feeds
        "inputs": [_value_info(onnx, v) for v in g.input if v.name not in init_names],
        "outputs": [_value_info(onnx, v) for v in g.output],
        "metadata": {p.key: p.value for p in model.metadata_props},
        "nodes": len(g.node),
        "operators": dict(Counter(n.op_type for n in g.node).most_common()),
        "initializers": len(g.initializer),
        "weights": weights,
        "external_data": external,
    }
