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
