"""A tiny hand-made multi-label detector and recordings with overlapping calls, for the tests of predict,
detect, evaluate, export, info and show on multi-label networks (SPEC 17).

`two_tone_checkpoint` writes a checkpoint whose net (one fc layer of two logistic units and cost.bce on
16 x 18 log-mel features of 1-s windows at 1 kHz) scores `low` when a 150 Hz tone is in the window and `high`
when a 350 Hz one is, each on its own: both at once when both sound. Its weights are, per class, the
difference of the mean features of windows with and without that tone (over every combination of the two),
scaled, so no training is needed and the tests are fast.
"""
from __future__ import annotations

import os

import numpy as np

from convnet_cli.ingest.features import FeatureSpec, compute_features
from convnet_cli.train.checkpoint import save_checkpoint

FEATURES = {"sample_rate": 1000, "duration": 1.0, "kind": "logmel", "n_fft": 128, "hop": 50, "window": "hann",
            "n_mels": 16, "fmin": 50.0, "fmax": 450.0, "n_mfcc": 20}
TONES = {"high": 350.0, "low": 150.0}
LABELS = ["high", "low"]
LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
fc1:    {type: fc, inputs: data, outputs: 2, neuron: logistic}
bce:    {type: cost.bce, inputs: [labels, fc1]}
"""
PARAMS = "DEFAULT: {epsW: 0.01, epsB: 0.01, momW: 0.9, momB: 0.9, wc: 0}\nbce: {coeff: 1}\n"


def signal(sr: int, seconds: float, calls=(), seed: int = 0, noise: float = 0.05, amp: float = 0.5):
    """White noise with tone calls [(begin, end, label)] of the TONES; float32."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    x = noise * rng.standard_normal(n)
    for b, e, label in calls:
        on = (t >= b) & (t < e)
        x[on] += amp * np.sin(2 * np.pi * TONES[label] * t[on] + rng.uniform(0, 2 * np.pi))
    return x.astype(np.float32)


def write_recording(path, seconds: float, calls=(), sr: int = 1000, seed: int = 0):
    import soundfile as sf

    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    sf.write(str(path), signal(sr, seconds, calls, seed), sr, subtype="PCM_16")
    return str(path)


def two_tone_checkpoint(path, window_hop: float | None = 0.5, record_multi_label: bool = True,
                        label_names=None) -> str:
    """The checkpoint (see the module doc). record_multi_label: write `multi_label: true` in its state (as
    train does); False leaves it to the batch folder named by data_path. label_names: other names for the
    classes of LABELS, in that order."""
    spec = FeatureSpec.from_dict(FEATURES)
    sr, n = spec.sample_rate, spec.num_samples
    combos = [(), ("low",), ("high",), ("low", "high")]
    rows, present = [], []
    for i in range(48):
        on = combos[i % 4]
        rows.append(signal(sr, 1.0, [(0.0, 1.0, c) for c in on], seed=300 + i)[:n])
        present.append([c in on for c in LABELS])
    feats = compute_features(np.stack(rows), spec, np).reshape(len(rows), -1)
    present = np.asarray(present)
    mean, std = feats.mean(axis=0), feats.std(axis=0) + 1e-3
    z = (feats - mean) / std
    weights, biases = [], []
    for c in range(len(LABELS)):
        mu1, mu0 = z[present[:, c]].mean(axis=0), z[~present[:, c]].mean(axis=0)
        d = mu1 - mu0
        w = d / (d @ d) * 16.0                   # logit +8 on a window with the tone, -8 without
        weights.append(w)
        biases.append(-float(w @ (mu0 + mu1) / 2))
    feats_state = dict(FEATURES)
    if window_hop is not None:
        feats_state["window_hop"] = window_hop
    state = {"epoch": 1, "batchnum": 1, "options": {}, "layer_def": LAYERS, "layer_params": PARAMS,
             "layer_def_name": "two-tone.yaml", "layer_params_name": "two-tone-params.yaml",
             "label_names": list(label_names or LABELS), "data_shape": list(spec.shape),
             "data_mean": [float(v) for v in mean], "data_std": [float(v) for v in std], "features": feats_state,
             "history": [], "best": None}
    if record_multi_label:
        state["multi_label"] = True
    return save_checkpoint(str(path), {"fc1/weights": np.stack(weights).astype(np.float32),
                                       "fc1/biases": np.asarray(biases, np.float32)}, state)


# two recordings: overlapping low and high calls, lone ones of each; the low call at 14.2 s covers 0.3 s of
# the window 13.5-14.5, below --min-overlap: an unknown entry
CALLS_A = [(2.0, 5.0, "low"), (3.0, 6.0, "high"), (9.0, 11.0, "high"), (14.2, 16.0, "low"), (19.0, 19.3, "low")]
CALLS_B = [(1.0, 3.0, "high"), (1.5, 3.5, "low"), (7.0, 9.0, "low")]


def make_multilabel_batches(root, test_fraction: float = 0.0, batch_size: int = 30) -> str:
    """ROOT/rec (a.wav, b.wav with CALLS_A, CALLS_B), ROOT/ann.csv and ROOT/batches made by
    `make-batches --annotations --multi-label` with 1-s windows every 0.5 s; the batch folder's path."""
    import yaml

    from tests.helpers import invoke

    root = str(root)
    write_recording(os.path.join(root, "rec", "a.wav"), 22, CALLS_A, seed=1)
    write_recording(os.path.join(root, "rec", "b.wav"), 12, CALLS_B, seed=2)
    lines = ["filename,start,end,label"] + [f"a.wav,{b},{e},{c}" for b, e, c in CALLS_A] \
        + [f"b.wav,{b},{e},{c}" for b, e, c in CALLS_B]
    with open(os.path.join(root, "ann.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "features.yaml"), "w") as f:
        f.write(yaml.safe_dump(FEATURES))
    out = os.path.join(root, "batches")
    r = invoke(["make-batches", os.path.join(root, "rec"), out, "--annotations", os.path.join(root, "ann.csv"),
                "--multi-label", "--features", os.path.join(root, "features.yaml"), "--window-hop", "0.5",
                "--test-fraction", str(test_fraction), "--batch-size", str(batch_size), "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    return out


def batch_truth(batches):
    """(BatchSet, filenames, targets (n, K) uint8) over every batch file of a multi-label folder."""
    from convnet_cli.data.batch_files import BatchSet

    bs = BatchSet(str(batches))
    assert bs.multi_label
    names, mats = [], []
    for b in bs.batch_numbers:
        _, _, t, fn = bs.read_batch(b)
        names += fn
        mats.append(t.matrix)
    return bs, names, np.concatenate(mats)
