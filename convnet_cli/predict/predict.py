"""Predictions from a checkpoint, on batch files or on raw audio (features computed as at training time).

Memory stays bounded: cases go through the net `batch` at a time and only the (n, K) probabilities are
kept (plus, when asked, the first `max_cases` inputs for plots).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from convnet_cli.backend import get_backend, to_host
from convnet_cli.data.targets import ClassTargets, MultiLabelTargets, Targets, kind_of
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import atomic_write, write_text_atomic
from convnet_cli.ingest.audio import AUDIO_EXTENSIONS, AUDIO_KINDS
from convnet_cli.net import Net
from convnet_cli.train.checkpoint import load_checkpoint


@dataclass
class Predictions:
    probs: np.ndarray            # (n, K) float32
    labels: np.ndarray           # (n,) int, -1 where unknown
    filenames: list
    label_names: list
    inputs: np.ndarray | None = None  # (m, C, H, W) raw features of the first m cases, when asked
    skipped: list = field(default_factory=list)  # [(path, reason)] audio that could not be read
    # a multi-label network (SPEC 17): probs are per-class logistic outputs, each case a set of classes;
    # targets (n, K) uint8, data/targets.py PRESENT / ABSENT / UNKNOWN, or None when the truth is not known
    multi_label: bool = False
    targets: np.ndarray | None = None

    @property
    def truth(self) -> Targets:
        """The cases' true targets as a data/targets.py Targets of the network's kind (on audio a multi-label
        network's are all unknown): it writes the CSV's columns and the report."""
        if not self.multi_label:
            return ClassTargets(self.labels)
        if self.targets is None:
            return MultiLabelTargets.unknown(len(self.filenames), len(self.label_names))
        return MultiLabelTargets(self.targets, self.labels)

    @property
    def labels_known(self) -> bool:
        return self.truth.all_known()


def checkpoint_kind(state: dict) -> type:
    """The kind of target (data/targets.py) a checkpoint's network was trained towards: what its state
    records (`multi_label`, SPEC 17), else what the batches.meta of the folder it was trained on says, when
    that folder is still there; else one class per case."""
    if "multi_label" in state:
        return kind_of(state)
    path = state.get("data_path") or (state.get("options") or {}).get("data_path")
    if not path or not os.path.isfile(os.path.join(str(path), "batches.meta")):
        return ClassTargets
    from convnet_cli.data.batch_files import BatchSet

    try:
        return BatchSet(str(path)).targets_kind
    except DataError:
        return ClassTargets


def checkpoint_multi_label(state: dict) -> bool:
    """Whether a checkpoint's network is multi-label (one logistic unit per class): checkpoint_kind's."""
    return checkpoint_kind(state).multi_label


def target_matrix(targets, k: int) -> np.ndarray:
    """(n, k) uint8 PRESENT / ABSENT / UNKNOWN of a data/targets.py Targets (one class per case: that class
    present and the others absent; a case without a label: all unknown)."""
    from convnet_cli.data.targets import ABSENT, PRESENT, UNKNOWN

    out = np.where(targets.dense(k) > 0, PRESENT, ABSENT).astype(np.uint8)
    out[~targets.known(k)] = UNKNOWN
    return out


def load_model(checkpoint, device: str = "cpu"):
    """(net, checkpoint) ready for inference on `device`."""
    ckpt = checkpoint if hasattr(checkpoint, "arrays") else load_checkpoint(checkpoint)
    return Net.from_checkpoint(ckpt, get_backend(device)), ckpt


class Runner:
    """Normalizes raw (n, C, H, W) features and runs them through the net in chunks."""

    def __init__(self, net, ckpt, layer, batch, views):
        shape = tuple(ckpt.state["data_shape"])
        self.net, self.layer, self.batch, self.views = net, layer, max(1, int(batch)), max(1, int(views))
        # the classifier's scores as one probability per class (layers/base.py class_probabilities: one
        # logistic unit of two classes gives both); another layer named by --layer is given as it is
        self.cost = net.scores_cost(layer)
        self.num_classes = len(ckpt.state.get("label_names") or [])
        self.mean = ckpt.data_mean.reshape(shape)
        std = ckpt.data_std.reshape(shape)
        self.std = np.maximum(std, 1e-6)
        self.shape = shape

    def _classes(self, p, xp):
        return p if self.cost is None else self.cost.class_probabilities(p, self.num_classes, xp)

    def shifts(self):
        """Time offsets of the views: 0 and symmetric shifts up to 10% of the frames."""
        w = self.shape[2]
        if self.views == 1 or w < 2:
            return [0]
        span = max(1, int(round(0.1 * w)))
        return [int(round(s)) for s in np.linspace(-span, span, self.views)]

    def __call__(self, raw) -> np.ndarray:
        """raw: (n, C, H, W), host or (audio features computed on the GPU) device -> probabilities (n, K)
        on the host, averaged over views."""
        if self.net.backend.is_gpu:
            return self._on_device(raw)
        out = []
        for i in range(0, raw.shape[0], self.batch):
            chunk = raw[i:i + self.batch].astype(np.float32, copy=False)
            acc = None
            for s in self.shifts():
                view = np.roll(chunk, s, axis=3) if s else chunk
                x = ((view - self.mean) / self.std).transpose(0, 2, 3, 1)
                self.net.forward({0: self.net.backend.asarray(np.ascontiguousarray(x))}, train=False,
                                 keep_cache=False, keep=(self.layer,))
                p = to_host(self.net.outputs[self.layer]).reshape(chunk.shape[0], -1).astype(np.float32)
                acc = p if acc is None else acc + p
            out.append(self._classes(acc / len(self.shifts()), np))
        k = len(out[0][0]) if out else 0
        return np.concatenate(out) if out else np.zeros((0, k), np.float32)

    def _on_device(self, raw) -> np.ndarray:
        """__call__ on a GPU: each chunk goes to the device once; shifts and normalisation happen there."""
        xp = self.net.xp
        mean, std = xp.asarray(self.mean), xp.asarray(self.std)
        out = []
        for i in range(0, raw.shape[0], self.batch):
            chunk = xp.asarray(raw[i:i + self.batch], dtype=xp.float32)
            acc = None
            for s in self.shifts():
                view = xp.roll(chunk, s, axis=3) if s else chunk
                x = xp.ascontiguousarray(((view - mean) / std).transpose(0, 2, 3, 1))
                self.net.forward({0: x}, train=False, keep_cache=False, keep=(self.layer,))
                p = self.net.outputs[self.layer].reshape(chunk.shape[0], -1).astype(xp.float32)
                acc = p if acc is None else acc + p
            out.append(to_host(self._classes(acc / len(self.shifts()), xp)))
        k = len(out[0][0]) if out else 0
        return np.concatenate(out) if out else np.zeros((0, k), np.float32)


def predict_batches(checkpoint, data_path: str | None = None, batches=None, layer: str | None = None,
                    max_cases: int | None = None, device: str = "cpu", batch: int = 256, views: int = 1,
                    keep_inputs: int = 0) -> Predictions:
    """Predict the cases of batch files (default: the run's data path and test range)."""
    from convnet_cli.data.batch_files import BatchSet

    net, ckpt = load_model(checkpoint, device)
    st = ckpt.state
    data_path = data_path or st.get("data_path") or st["options"].get("data_path")
    if not data_path:
        raise ConfigError("--data-path is required: the checkpoint does not name its batch folder")
    bs = BatchSet(data_path)
    if list(bs.data_shape) != list(st["data_shape"]):
        raise DataError(f"{data_path}: cases have shape {list(bs.data_shape)} but the network was trained on "
                        f"{list(st['data_shape'])}; make the batches with the features of the training run")
    kind = checkpoint_kind(st)
    multi = kind.multi_label
    if bs.targets_kind is not kind:
        data_kind = bs.targets_kind
        raise DataError(f"{data_path}: the batches are {data_kind.name} ({data_kind.describe}), but the network "
                        f"{ckpt.path} is {kind.name} ({kind.describe}); make the batches with {kind.made_with}, "
                        f"or predict them with a network trained on {data_kind.name} batches")
    if multi and list(bs.label_names) != list(st["label_names"]):
        raise DataError(f"{data_path}: the batches' classes ({', '.join(bs.label_names)}) are not the network's "
                        f"({', '.join(st['label_names'])}); make the batches with --label-names "
                        f"{','.join(st['label_names'])}")
    batches = list(batches or st["options"].get("test_range") or bs.test_range)
    layer = net.output_layer(layer)
    run = Runner(net, ckpt, layer, batch, views)
    probs, labels, names, kept, targets = [], [], [], [], []
    remaining = max_cases
    k = len(st["label_names"])
    for b in batches:
        x, scale, tg, fn = bs.read_batch(b)
        if scale is not None:
            x = np.float32(scale[0]) + np.float32(scale[1]) * x.astype(np.float32)
        data = np.ascontiguousarray(x, dtype=np.float32)
        if remaining is not None:
            data, fn = data[:remaining], fn[:remaining]
            tg = tg.take(np.arange(len(fn)))
            remaining -= len(fn)
        raw = data.reshape((-1,) + tuple(bs.data_shape))
        probs.append(run(raw))
        labels.append(np.asarray(tg.labels, dtype=np.int64))
        if multi:
            targets.append(target_matrix(tg, k))
        names.extend(fn)
        have = sum(len(k) for k in kept)
        if keep_inputs and have < keep_inputs:
            kept.append(raw[:keep_inputs - have].astype(np.float32))
        if remaining is not None and remaining <= 0:
            break
    return Predictions(np.concatenate(probs) if probs else np.zeros((0, 0), np.float32),
                       np.concatenate(labels) if labels else np.zeros((0,), np.int64), names,
                       list(st["label_names"]), np.concatenate(kept) if kept else None, multi_label=multi,
                       targets=np.concatenate(targets) if targets else None)


def collect_audio(inputs) -> list:
    """[(path, display name, label name or None)] for audio files and folders (recursively)."""
    out = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                for f in sorted(files):
                    if f.lower().endswith(AUDIO_EXTENSIONS):
                        p = os.path.join(root, f)
                        rel = os.path.relpath(p, item)
                        parent = os.path.basename(os.path.dirname(p)) if os.path.dirname(rel) else None
                        found.append((p, rel.replace(os.sep, "/"), parent))
            if not found:
                raise DataError(f"{item}: no audio files ({AUDIO_KINDS}) in this folder")
            out.extend(found)
        elif os.path.isfile(item):
            out.append((item, os.path.basename(item), None))
        else:
            raise DataError(f"{item}: no such audio file or folder")
    return out


def predict_audio(checkpoint, inputs, layer: str | None = None, device: str = "cpu", batch: int = 256,
                  views: int = 1, jobs: int | None = None, channel="mix", time_expansion: float = 1.0) -> Predictions:
    """Predict audio files and folders with the checkpoint's feature settings.

    Files in class-named subfolders (yes/clip.wav with a class 'yes') get that class as their true label
    when every file does; otherwise labels are unknown (-1). A multi-label network's cases have no known
    targets (a folder names one class, not a clip's whole set): give batches from make-batches --multi-label
    for its report. channel: --channel ('mix', N, or 'all': a row per channel, named '<name>#ch<k>');
    time_expansion: --time-expansion's factor."""
    from convnet_cli.ingest.audio import CHANNEL_ALL, check_time_expansion, parse_channel, stream_name
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.make_batches import features_for_files, file_streams

    channel, time_expansion = parse_channel(channel), check_time_expansion(time_expansion)
    net, ckpt = load_model(checkpoint, device)
    st = ckpt.state
    if not st.get("features"):
        raise DataError(f"{ckpt.path}: the network was trained on batches without feature settings (not made "
                        f"from audio); predict from batch files with --data-path")
    spec = FeatureSpec.from_dict(st["features"], ckpt.path)
    items = [(p, stream_name(d, ch) if channel == CHANNEL_ALL else d, lbl, ch)
             for p, d, lbl in collect_audio(inputs) for ch in file_streams(p, channel)]
    label_names = list(st["label_names"])
    index = {n: i for i, n in enumerate(label_names)}
    known = all(lbl in index for _, _, lbl, _ in items)
    layer = net.output_layer(layer)
    run = Runner(net, ckpt, layer, batch, views)
    probs, labels, names, skipped = [], [], [], []
    chunk = max(1, int(batch))
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        # on a GPU the spectrograms are computed there (decoding stays on the host) and stay for the net
        feats, ok_at, bad = features_for_files([t[0] for t in part], spec, jobs=jobs or 1, backend=net.backend,
                                               channels=[t[3] for t in part], time_expansion=time_expansion,
                                               positions=True)
        for j, reason in bad:
            if (part[j][0], reason) not in skipped:   # a file's channels fail alike: named once
                skipped.append((part[j][0], reason))
        kept = [part[j] for j in ok_at]
        if len(kept):
            probs.append(run(feats if net.backend.is_gpu else np.asarray(feats, dtype=np.float32)))
            names.extend(t[1] for t in kept)
            labels.extend(index[t[2]] if known else -1 for t in kept)
    if not names:
        reason = f" ({skipped[0][1]})" if skipped else ""
        raise DataError(f"none of the {len(items)} audio file(s) could be read{reason}")
    multi = checkpoint_multi_label(st)
    return Predictions(np.concatenate(probs), np.asarray(labels, dtype=np.int64), names, label_names,
                       skipped=skipped, multi_label=multi)


def check_probabilities(probs, case_name, not_written: str):
    """DataError when a row of probs (N, K) holds NaN or inf, naming the first such case (case_name(i)) and
    what was not written: predict, detect and export --verify refuse such a net's output alike (an overflowing
    checkpoint otherwise gives an all-nan CSV and no detection at all)."""
    probs = np.asarray(probs)
    bad = ~np.isfinite(probs).all(axis=1) if len(probs) else np.zeros(0, bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"the network gave a non-finite probability (NaN or inf) for '{case_name(i)}' "
                        f"({int(bad.sum())} of {len(bad)} cases); check that case's input (a corrupt clip, "
                        f"features far outside the training range) or the checkpoint; {not_written}")


def write_csv(preds: Predictions, path: str, thresholds=None) -> str:
    """filename,predicted,<label 1>,...,<label K>[,true] with probabilities to 6 decimals; atomic.

    Multi-label (preds.multi_label): `predicted` is the ';'-joined classes whose probability is at or above
    their threshold (thresholds: K values, default 0.5 each), `true` the ';'-joined classes present (unknown
    entries are not listed). DataError when a probability is not finite (naming the case): a CSV never holds
    nan."""
    check_probabilities(preds.probs, lambda i: preds.filenames[i], f"{path} was not written")
    prepare_out(path, "--out")
    names = list(preds.label_names)
    truth = preds.truth
    predicted = truth.predicted_column(preds.probs, names, thresholds)
    true = truth.true_column(names) if truth.all_known() else None

    def write(fb):
        f = io.TextIOWrapper(fb, encoding="utf-8", newline="")
        w = csv.writer(f)
        w.writerow(["filename", "predicted"] + names + (["true"] if true is not None else []))
        for i, fn in enumerate(preds.filenames):
            w.writerow([fn, predicted[i]] + [f"{p:.6f}" for p in preds.probs[i]] + ([true[i]] if true is not None
                                                                                      else []))
        f.flush()
        f.detach()

    atomic_write(path, write)
    return path


def prepare_out(path: str, flag: str):
    """The folder of the file `path` made (if need be); a one-line error naming the path when it cannot be."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: is a folder; give a file name (e.g. {os.path.join(path, 'preds.csv')})")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create the folder {folder} ({exc.strerror or exc}); "
                          "choose another path") from None


def write_report(preds: Predictions, folder: str, topk: int = 5, thresholds=None) -> tuple:
    """(report dict, path of report.json): the truth's report (data/targets.py; metrics.py). Needs known
    targets. Multi-label: at `thresholds` (K values, default 0.5 each), unknown targets left out."""
    truth = preds.truth
    if not truth.all_known():
        raise DataError(truth.no_truth)
    report = truth.report(preds.probs, preds.label_names, topk=topk, thresholds=thresholds)
    path = os.path.join(folder, "report.json")
    write_text_atomic(path, json.dumps(report, indent=2))
    return report, path
