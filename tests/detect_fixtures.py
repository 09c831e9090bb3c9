"""A tiny hand-made detector and long test recordings for the detect/evaluate tests.

`tone_checkpoint` writes a checkpoint whose net (one fc layer + softmax on 16 x 18 log-mel features of 1-s
windows at 1 kHz) says 'tone' when a 200 Hz tone fills the window and 'noise' otherwise: its weights are
the difference of the mean features of the two, scaled, so no training is needed and the test is fast.
"""
from __future__ import annotations

import numpy as np

from convnet_cli.ingest.features import FeatureSpec, compute_features
from convnet_cli.train.checkpoint import save_checkpoint

FEATURES = {"sample_rate": 1000, "duration": 1.0, "kind": "logmel", "n_fft": 128, "hop": 50, "window": "hann",
            "n_mels": 16, "fmin": 50.0, "fmax": 450.0, "n_mfcc": 20}
TONE_HZ = 200.0
LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
fc1:    {type: fc, inputs: data, outputs: 2}
probs:  {type: softmax, inputs: fc1}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
PARAMS = "DEFAULT: {epsW: 0.01, epsB: 0.01, momW: 0.9, momB: 0.9, wc: 0}\nlogprob: {coeff: 1}\n"


def signal(sr: int, seconds: float, events=(), seed: int = 0, tone_hz: float = TONE_HZ, amp: float = 0.3):
    """White noise (std 0.02) with tones during `events` [(begin, end)] seconds; float32."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    x = 0.02 * rng.standard_normal(n)
    t = np.arange(n) / sr
    for b, e in events:
        m = (t >= b) & (t < e)
        x[m] += amp * np.sin(2 * np.pi * tone_hz * t[m])
    return x.astype(np.float32)


def write_recording(path, seconds: float, events=(), sr: int = 2000, seed: int = 0, subtype="PCM_16"):
    import soundfile as sf

    sf.write(str(path), signal(sr, seconds, events, seed), sr, subtype=subtype)
    return str(path)


def many_recordings(folder, count: int = 40):
    """`count` 4-minute 1 kHz recordings with one tone each: enough work for a detect run to be
    interrupted part of the way through (the Ctrl-C tests)."""
    folder.mkdir()
    for i in range(count):
        write_recording(folder / f"r{i:02d}.wav", 240, [(100.0, 102.0)], sr=1000, seed=i)
    return folder


def tone_checkpoint(path, window_hop: float | None = 0.5) -> str:
    spec = FeatureSpec.from_dict(FEATURES)
    sr, n = spec.sample_rate, spec.num_samples
    noise = np.stack([signal(sr, 1.0, seed=100 + i) for i in range(16)])
    tone = np.stack([signal(sr, 1.0, [(0, 1)], seed=200 + i) for i in range(16)])
    f_noise = compute_features(noise[:, :n], spec, np).reshape(16, -1)
    f_tone = compute_features(tone[:, :n], spec, np).reshape(16, -1)
    both = np.concatenate([f_noise, f_tone])
    mean, std = both.mean(axis=0), both.std(axis=0) + 1e-3
    mu0, mu1 = ((f_noise - mean) / std).mean(axis=0), ((f_tone - mean) / std).mean(axis=0)
    d = mu1 - mu0
    w = d / (d @ d) * 16.0                       # logit difference +8 on a tone window, -8 on noise
    b = -float(w @ (mu0 + mu1) / 2)
    weights = np.stack([-w / 2, w / 2]).astype(np.float32)          # (outputs, C*H*W)
    biases = np.array([-b / 2, b / 2], np.float32)
    feats = dict(FEATURES)
    if window_hop is not None:
        feats["window_hop"] = window_hop
    state = {"epoch": 1, "batchnum": 1, "options": {}, "layer_def": LAYERS, "layer_params": PARAMS,
             "layer_def_name": "tone.yaml", "layer_params_name": "tone-params.yaml",
             "label_names": ["noise", "tone"], "data_shape": list(spec.shape),
             "data_mean": [float(v) for v in mean], "data_std": [float(v) for v in std], "features": feats,
             "history": [], "best": None}
    return save_checkpoint(str(path), {"fc1/weights": weights, "fc1/biases": biases}, state)
