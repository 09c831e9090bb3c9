"""Generated multi-label clips for tests: every clip holds a random set of up to three tones of their own
frequencies (some none, one class rare), in noise; a labels CSV `file,labels` names them, `;`-separated (SPEC 17)."""
from __future__ import annotations

import csv
import os

import numpy as np
import soundfile as sf

CLASSES = ("high", "low", "mid")
FREQS = {"low": 250.0, "mid": 520.0, "high": 800.0}
CHANCE = {"low": 0.45, "mid": 0.15, "high": 0.55}  # how often a clip holds the class: mid is rare
SR = 2000
FEATURES = "sample_rate: 2000\nduration: 1.0\nkind: logmel\nn_fft: 256\nhop: 100\nn_mels: 16\nfmin: 20\nfmax: 1000\n"

LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, init: kaiming_normal}
bn1:    {type: batchnorm, inputs: conv1, neuron: relu}
pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 2}
drop:   {type: dropout, inputs: pool1}
fc2:    {type: fc, inputs: drop, outputs: 3, init: glorot_uniform, neuron: logistic}
bce:    {type: cost.bce, inputs: [labels, fc2]}
"""
PARAMS = """\
DEFAULT: {updater: adam, epsW: 0.01, epsB: 0.01, wc: 0.0001}
drop: {keep: 0.8}
"""


def make_multilabel_clips(root, n=40, seed=0) -> dict:
    """root/clips/clipNNN.wav and root/labels.csv; returns {file: [classes]}."""
    rng = np.random.default_rng(seed)
    clips = os.path.join(root, "clips")
    os.makedirs(clips, exist_ok=True)
    out = {}
    t = np.arange(SR) / SR
    for i in range(n):
        present = [c for c in CLASSES if rng.random() < CHANCE[c]]
        x = 0.05 * rng.standard_normal(SR)
        for c in present:
            x += 0.3 * np.sin(2 * np.pi * FREQS[c] * rng.uniform(0.98, 1.02) * t + rng.uniform(0, 6.3))
        name = f"clip{i:03d}.wav"
        sf.write(os.path.join(clips, name), x.astype(np.float32), SR)
        out[name] = present
    with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "labels"])
        for name, present in out.items():
            w.writerow([name, ";".join(present)])
    with open(os.path.join(root, "features.yaml"), "w") as f:
        f.write(FEATURES)
    with open(os.path.join(root, "layers.yaml"), "w") as f:
        f.write(LAYERS)
    with open(os.path.join(root, "params.yaml"), "w") as f:
        f.write(PARAMS)
    return out
