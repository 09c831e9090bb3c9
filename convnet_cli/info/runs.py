"""`convnet info` for a run directory or a checkpoint: the layer table, options, epochs done, the best test
and the checkpoints present.

A checkpoint is read without its weights: `__state__` (JSON) and the header of every other .npy member
(shape and dtype) are all that is read. The layer table comes from the layer-def text in `__state__`,
built with the data shape it records (shapes inferred, no weights drawn); a layer's parameter count is
the size of its learned arrays in the checkpoint.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from convnet_cli.config.layer_def import build_layers
from convnet_cli.config.loader import parse_layer_def_text
from convnet_cli.config.yamlio import display_name
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.show.run import LOG_NAME, read_log
from convnet_cli.train.checkpoint import FORMAT_VERSION, list_checkpoints, resolve_checkpoint

BEST = "best.npz"


def _unreadable(path, exc) -> DataError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(f"{path}: not a readable convnet checkpoint ({reason}; truncated or damaged); "
                     "pick another checkpoint of the run")


def _header(f):
    """(shape, dtype) from an open .npy member, leaving its data unread."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:  # 3.0 (utf-8 field names) has no public header reader; such members are small
        raise ValueError(f"npy format {version}")
    return tuple(int(s) for s in shape), np.dtype(dtype)


def read_checkpoint_header(path: str) -> tuple:
    """(state dict, {array name: (shape, dtype)}) of a checkpoint .npz, without reading any weights."""
    state_text, shapes = None, {}
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                key = member.filename[:-4]
                with z.open(member) as f:
                    if key == "__state__":
                        state_text = str(np.lib.format.read_array(f, allow_pickle=False))
                        continue
                    try:
                        shapes[key] = _header(f)
                    except ValueError:
                        with z.open(member) as g:
                            a = np.lib.format.read_array(g, allow_pickle=False)
                        shapes[key] = (tuple(a.shape), a.dtype)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise _unreadable(path, exc) from None
    if state_text is None:
        raise DataError(f"{path}: not a convnet checkpoint (no __state__ entry); give a checkpoint written by "
                        "convnet train")
    try:
        state = json.loads(state_text)
    except json.JSONDecodeError:
        raise DataError(f"{path}: its __state__ entry is not valid JSON; the file is damaged") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: its __state__ entry is not a JSON object; the file is damaged")
    if state.get("version", 0) > FORMAT_VERSION:
        raise DataError(f"{path}: written by a newer convnet (format {state.get('version')}); upgrade convnet")
    return state, shapes


def layer_table(state: dict, shapes: dict, path: str) -> tuple:
    """([{name, type, inputs, output_shape, neuron, params}] in layer-def order, {names of learned arrays})."""
    for key in ("layer_def", "data_shape"):
        if key not in state:
            raise DataError(f"{path}: __state__ has no '{key}'; the checkpoint is damaged")
    source = state.get("layer_def_name") or "layers.yaml"
    try:
        specs = parse_layer_def_text(state["layer_def"], source)
        layers = build_layers(specs, tuple(int(s) for s in state["data_shape"]), display_name(source))
    except ConfigError as exc:
        raise DataError(f"{path}: its layer definition does not build with this convnet ({exc})") from None
    rows, learned = [], set()
    for l in layers:
        n = 0
        for p in l.learned:
            key = f"{l.name}/{p}"
            if key in shapes:
                learned.add(key)
                n += int(np.prod(shapes[key][0], dtype=np.int64))
        rows.append({"name": l.name, "type": l.type, "inputs": list(l.in_names),
                     "output_shape": [int(s) for s in l.out_shape],
                     "neuron": repr(l.neuron) if getattr(l, "neuron", None) is not None else None, "params": n})
    return rows, learned


def _tests(run_dir: str, state: dict) -> list:
    """Test records, oldest first: from train_log.jsonl (full records), else the checkpoint's history."""
    log = os.path.join(run_dir, LOG_NAME)
    if os.path.isfile(log):
        try:
            return [r for r in read_log(log) if r.get("type") == "test"]
        except (OSError, UnicodeDecodeError):
            pass
    return [h for h in state.get("history") or [] if h.get("type") == "test"]


def _best_by(options: dict, tests: list) -> str:
    given = options.get("best_by")
    if given:
        return str(given)
    # before --best-by: the lowest test error, or the lowest cost for a net without an error rate
    return "error" if any(t.get("error") is not None for t in tests) else "cost"


def _best(state: dict, tests: list, by: str, run_dir: str) -> dict | None:
    record = None
    mark = state.get("best") or {}
    if mark.get("epoch") is not None:
        hits = [t for t in tests if t.get("epoch") == mark["epoch"] and t.get("batch") == mark.get("batch")]
        record = hits[-1] if hits else None
    if record is None and tests and not mark:
        key = by if by in ("cost", "error", "auc", "map") else "cost"
        scored = [t for t in tests if t.get(key) is not None]
        if scored:
            pick = max if key in ("auc", "map") else min
            record = pick(scored, key=lambda t: t[key])
    if record is None and not mark:
        return None
    out = {"by": by, "epoch": (record or mark).get("epoch"), "batch": (record or mark).get("batch")}
    for key in ("cost", "error", "auc", "map"):   # map: a multi-label run's mean average precision
        if record is not None and record.get(key) is not None:
            out[key] = record[key]
    if "metric" in mark:
        out["metric"] = mark["metric"]
    best_path = os.path.join(run_dir, BEST)
    out["checkpoint"] = BEST if os.path.isfile(best_path) else None
    return out


def _checkpoints(run_dir: str) -> list:
    out = [{"file": os.path.basename(p), "epoch": e, "batch": b, "bytes": os.path.getsize(p)}
           for e, b, p in list_checkpoints(run_dir)]
    best = os.path.join(run_dir, BEST)
    if os.path.isfile(best):
        out.append({"file": BEST, "epoch": None, "batch": None, "bytes": os.path.getsize(best)})
    return out


def describe_run(path: str) -> dict:
    """A run directory (its newest checkpoint: the latest state) or one checkpoint file."""
    is_dir = os.path.isdir(path)
    ckpt = resolve_checkpoint(path, prefer_best=False)
    run_dir = path if is_dir else (os.path.dirname(path) or ".")
    state, shapes = read_checkpoint_header(ckpt)
    options = dict(state.get("options") or {})
    layers, learned_keys = layer_table(state, shapes, ckpt)
    tests = _tests(run_dir, state)
    by = _best_by(options, tests)
    per_epoch = len(options.get("train_range") or []) or None
    epoch = int(state.get("epoch", 1))
    in_epoch = int(state.get("batch_in_epoch", 0))
    done = (epoch - 1) + (in_epoch / per_epoch if per_epoch else 0.0)
    other = [v for k, v in shapes.items() if k not in learned_keys]  # running statistics, updater state
    return {
        "kind": "run" if is_dir else "checkpoint",
        "path": path,
        "run_dir": run_dir,
        "checkpoint": ckpt,
        "format_version": state.get("version"),
        "label_names": list(state.get("label_names") or []),
        "multi_label": bool(state.get("multi_label")),   # one logistic output per class (SPEC 17)
        "data_shape": list(state.get("data_shape") or []),
        "features": state.get("features"),
        "data_path": state.get("data_path") or options.get("data_path"),
        "layer_def": state.get("layer_def_name"),
        "layer_params": state.get("layer_params_name"),
        "layers": layers,
        "total_params": sum(r["params"] for r in layers),
        "other_arrays": {"count": len(other),
                         "bytes": int(sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d in other))},
        "options": options,
        "epochs": options.get("epochs"),
        "epochs_done": round(done, 4),
        "batches_done": state.get("batches_done"),
        "batches_per_epoch": per_epoch,
        "stopped_early": bool(state.get("stopped_early")),
        "seconds": state.get("seconds"),
        "tests": len(tests),
        "best": _best(state, tests, by, run_dir),
        "checkpoints": _checkpoints(run_dir),
    }

