"""What `convnet show` reads from a run: its log, its checkpoint's filters, predictions on its test data.

The plots themselves are in plots.py; this module turns a run directory into the arrays they take and
turns what can go wrong (no run there, an unknown layer, a layer without filters) into ConfigErrors.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from convnet_cli.errors import ConfigError, DataError, did_you_mean

LOG_NAME = "train_log.jsonl"


class RunPaths:
    """-f RUN: a run directory or one checkpoint file in it."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise ConfigError(f"{path}: no such run directory or checkpoint; give -f RUNS/<run> as made by "
                              f"'convnet train'")
        if os.path.isdir(path):
            self.run_dir, self.checkpoint_path = path, None
        else:
            self.run_dir, self.checkpoint_path = os.path.dirname(os.path.abspath(path)) or ".", path
        self.given = path
        self._ckpt = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.run_dir, LOG_NAME)

    def checkpoint(self):
        """The Checkpoint (arrays, state): the file given, or best.npz, else the newest in the run."""
        if self._ckpt is None:
            from convnet_cli.train.checkpoint import load_checkpoint

            try:
                self._ckpt = load_checkpoint(self.checkpoint_path or self.run_dir, check_finite=False)
            except DataError as exc:
                raise ConfigError(str(exc)) from None
        return self._ckpt


def read_log(path: str) -> list:
    """The records of a train_log.jsonl. A line that is not JSON (the torn last line of a run still
    writing) is skipped."""
    records = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("type") in ("train", "test"):
                records.append(rec)
    return records


def run_best_by(run: RunPaths) -> str:
    """The run's --best-by (runs from before the flag chose by error); cost when no checkpoint can be read."""
    try:
        state = run.checkpoint().state
    except ConfigError:
        return "cost"
    best = state.get("best") or {}
    return best.get("by") or (state.get("options") or {}).get("best_by") or "error"


def cost_records(run: RunPaths) -> list:
    """Log records of the run; when the log is missing, the history kept in the checkpoint."""
    if os.path.exists(run.log_path):
        records = read_log(run.log_path)
    else:
        records = list(run.checkpoint().state.get("history") or [])
    if not records:
        raise ConfigError(f"{run.run_dir}: no training or test records yet (in {LOG_NAME} or the checkpoint); "
                          f"train for at least one batch first")
    return records


def _built_layers(ckpt):
    from convnet_cli.net import Net

    return Net.from_checkpoint(ckpt, load_arrays=False).layers


def filter_weights(ckpt, layer: str) -> tuple:
    """(weights (F, C, fh, fw), description) of a layer of the checkpoint whose class has filters to show
    (`Layer.filter_bank`: conv, local and fc)."""
    from convnet_cli.layers.registry import REGISTRY

    layers = {l.name: l for l in _built_layers(ckpt)}
    if layer not in layers:
        raise ConfigError(f"layer '{layer}' is not in the network{did_you_mean(layer, layers)}; "
                          f"layers: {', '.join(layers)}")
    lay = layers[layer]
    prefix = f"{layer}/"
    params = {k[len(prefix):]: np.asarray(a, dtype=np.float32) for k, a in ckpt.arrays.items()
              if k.startswith(prefix) and "/" not in k[len(prefix):]}  # its parameters, not their updater state
    bank = lay.filter_bank(params)
    if bank is None:
        types = [t for t, c in REGISTRY.items() if c.provides("filter_bank")]
        with_filters = [n for n, l in layers.items() if l.provides("filter_bank")]
        raise ConfigError(f"layer '{layer}' ({lay.type}) has no filters to show; --filters takes a {_one_of(types)} "
                          f"layer: {', '.join(with_filters) or 'the network has none'}")
    return bank


def _one_of(words: list) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def predictions(run: RunPaths, layer: str | None, data_path: str | None, max_cases: int | None,
                keep_inputs: int = 0):
    """Predictions of the checkpoint on its test batches (or the batches at data_path)."""
    from convnet_cli.predict.predict import predict_batches

    return predict_batches(run.checkpoint(), data_path, None, layer=layer, max_cases=max_cases,
                           keep_inputs=keep_inputs)


def multilabel_figures(preds, thresholds=None) -> tuple:
    """(curves for plots.plot_pr_curves, true and predicted co-occurrence (k, k)) of multi-label predictions
    with known targets; unknown entries are left out (of the co-occurrence too: a pair counts where both
    classes are known present, or predicted at their thresholds on known entries)."""
    from convnet_cli.data.targets import PRESENT, UNKNOWN
    from convnet_cli.metrics import average_precision_from_curve, pr_curve, predicted_sets
    from convnet_cli.thresholds import DEFAULT_THRESHOLD

    names = list(preds.label_names)
    thr = np.asarray([DEFAULT_THRESHOLD] * len(names) if thresholds is None else thresholds, dtype=np.float64)
    present, known = preds.targets == PRESENT, preds.targets != UNKNOWN
    pred = predicted_sets(preds.probs, thr) & known
    curves = {}
    for c, name in enumerate(names):
        m = known[:, c]
        y, s = present[m, c], preds.probs[m, c]
        n_pos = int(y.sum())
        _, prec, rec = pr_curve(s, y, n_pos)
        hit = s >= thr[c]
        at = (float((hit & y).sum() / hit.sum()) if hit.any() else 1.0, float((hit & y).sum() / n_pos)) \
            if n_pos else None
        curves[name] = {"precision": prec, "recall": rec, "ap": average_precision_from_curve(prec, rec) if n_pos
                        else None, "at_threshold": at, "threshold": float(thr[c]), "support": n_pos}
    on_true = (present & known).astype(np.int64)
    on_pred = pred.astype(np.int64)
    return curves, on_true.T @ on_true, on_pred.T @ on_pred


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "layer"
