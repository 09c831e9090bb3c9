"""`convnet export -f RUN|CHECKPOINT --out model.onnx`: the trained network as an ONNX model."""
from __future__ import annotations

import json
import os

import click

from convnet_cli.errors import ConfigError


@click.command("export")
@click.option("-f", "checkpoint", required=True, type=click.Path(),
              help="Checkpoint file, or a run directory (then best.npz, else the newest).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@click.option("--layer", help="Layer whose output is `probs`.  [default: the input of the first cost]")
@click.option("--verify", is_flag=True,
              help="Run the written model in ONNX Runtime on random cases and compare with convnet's own forward "
                   "pass (needs onnxruntime); exit 1 when they differ by more than 1e-4.")
@click.option("--quiet", is_flag=True, help="Print only errors.")
def command(checkpoint, out, layer, verify, quiet):
    """Export a trained network as an ONNX model (opset 17).

    \b
    convnet export -f RUNS/ConvNet__... --out model.onnx
    convnet export -f RUNS/ConvNet__.../12.40.npz --out model.onnx --verify

    The model's input `features` is float32 (N, C, H, W), a case as make-batches writes it (the
    normalisation of the batches is inside the model); its output `probs` is (N, classes): softmax
    probabilities, or for a multi-label network one logistic output per class. The class names, feature
    settings, data shape, convnet version, epoch and multi_label are in its metadata.
    """
    from convnet_cli.export.onnx import checkpoint_to_onnx, write_model

    model, ckpt = checkpoint_to_onnx(checkpoint, layer)
    path = write_model(model, out)
    if not quiet:
        props = {p.key: p.value for p in model.metadata_props}
        shape = json.loads(props["data_shape"])
        k = len(json.loads(props["label_names"])) or model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        size = os.path.getsize(path)
        kind = ", one logistic output per class (multi-label)" if props.get("multi_label") == "true" else ""
        click.echo(f"wrote {path} ({size / 1e6:.2f} MB, opset {model.opset_import[0].version}) from {ckpt.path}: "
                   f"features (N, {', '.join(str(s) for s in shape)}) float32 -> probs (N, {k}){kind}, "
                   f"epoch {props['epoch']}")
    if verify:
        diff = verify_model(path, ckpt, layer)
        if diff > 1e-4:
            raise click.ClickException(f"{path}: ONNX Runtime's probabilities differ from convnet's by {diff:.3g} "
                                 f"(more than 1e-4); please report this with the layer definition")
        if not quiet:
            click.echo(f"verified with ONNX Runtime: largest difference from convnet's probabilities {diff:.2g}")


def verify_model(path: str, ckpt, layer: str | None = None, cases: int = 16, seed: int = 0) -> float:
    """Largest |ONNX Runtime - convnet| over the probabilities of `cases` random cases drawn around the
    training data's mean with its standard deviation; inf where only ONNX Runtime's are not finite.
    DataError (predict's) when convnet's own probabilities are not finite: the checkpoint overflows."""
    import numpy as np

    from convnet_cli.predict.predict import Runner, check_probabilities, load_model

    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("--verify needs ONNX Runtime, which is not installed; pip install onnxruntime") from None
    net, ckpt = load_model(ckpt, "cpu")
    shape = tuple(ckpt.state["data_shape"])
    rng = np.random.default_rng(seed)
    mean = ckpt.data_mean.reshape(shape)
    std = ckpt.data_std.reshape(shape)
    raw = (mean + std * rng.standard_normal((cases,) + shape)).astype(np.float32)
    ours = Runner(net, ckpt, net.output_layer(layer), cases, 1)(raw)
    check_probabilities(ours, lambda i: f"random case {i + 1} of --verify",
                        f"{path} was written but cannot be verified")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    theirs = session.run(["probs"], {"features": raw})[0]
    diff = np.abs(theirs - ours)
    return float(np.where(np.isfinite(diff), diff, np.inf).max())
