"""Generated audio for tests: no test depends on ../shared or on downloaded data.

`make_tone_dataset` writes a folder per class of short clips: class k is a tone whose frequency grows with
k (log-spaced between 300 Hz and 0.35 * sr), with a random start phase, a small random detune and white
noise, so the classes are easy to tell apart by their spectrum and no two clips are identical.
"""
from __future__ import annotations

import csv
import os

import numpy as np
import soundfile as sf

SUBTYPES = {"wav": "PCM_16", "flac": "PCM_16", "aiff": "PCM_16", "aif": "PCM_16", "ogg": "VORBIS"}


def tone(freq, sr, seconds, rng, noise=0.05, channels=1):
    """(samples,) or (samples, channels) float32 tone in white noise."""
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) + noise * rng.standard_normal(n)
    x = x.astype(np.float32)
    if channels > 1:
        x = np.stack([x * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)
    return x


def class_freqs(classes, sr):
    return {c: f for c, f in zip(classes, np.geomspace(300.0, 0.35 * sr, len(classes)))}


def write_clip(path, x, sr, fmt=None):
    fmt = (fmt or os.path.splitext(path)[1][1:]).lower()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sf.write(path, x, sr, format={"aif": "AIFF"}.get(fmt, fmt.upper()), subtype=SUBTYPES[fmt])
    return path


def make_tone_dataset(root, classes=("low", "high"), per_class=8, sr=8000, seconds=0.5, seed=0, fmt="wav"):
    """Folder per class: root/<class>/<class>_<i>.<fmt>. Returns {relative path: class}."""
    rng = np.random.default_rng(seed)
    freqs = class_freqs(classes, sr)
    out = {}
    for c in classes:
        for i in range(per_class):
            rel = f"{c}/{c}_{i:03d}.{fmt}"
            f = freqs[c] * rng.uniform(0.97, 1.03)
            write_clip(os.path.join(root, rel), tone(f, sr, seconds, rng), sr, fmt)
            out[rel] = c
    return out


def make_flat_dataset(root, csv_path, labels=("0", "1"), per_class=6, sr=2000, seconds=2.0, seed=0, fmt="aiff",
                      header=("clip_name", "label"), prefix="train"):
    """The Kaggle whale layout: root/<prefix><i>.aiff and a CSV `clip_name,label`. Returns {name: label}."""
    rng = np.random.default_rng(seed)
    freqs = class_freqs(labels, sr)
    rows = []
    for i in range(per_class * len(labels)):
        lab = labels[i % len(labels)]
        name = f"{prefix}{i + 1}.{fmt}"
        write_clip(os.path.join(root, name), tone(freqs[lab], sr, seconds, rng), sr, fmt)
        rows.append((name, lab))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return dict(rows)


def write_bad_files(folder, sr=8000):
    """One of each kind of unreadable audio, in `folder`. Returns {file name: words its reason must hold}."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    bad = {}
    open(os.path.join(folder, "empty.wav"), "wb").close()
    bad["empty.wav"] = "empty"
    with open(os.path.join(folder, "text.wav"), "w") as f:
        f.write("this is a text file, not audio\n" * 20)
    bad["text.wav"] = "format not recognised"
    good = os.path.join(folder, "_tmp.flac")
    write_clip(good, tone(440, sr, 0.5, rng), sr)
    blob = open(good, "rb").read()
    os.remove(good)
    with open(os.path.join(folder, "truncated.flac"), "wb") as f:
        f.write(blob[: len(blob) // 2])
    bad["truncated.flac"] = "cannot decode"
    wav = os.path.join(folder, "_tmp.wav")
    write_clip(wav, tone(440, sr, 0.5, rng), sr)
    blob = open(wav, "rb").read()
    os.remove(wav)
    with open(os.path.join(folder, "truncated.wav"), "wb") as f:
        f.write(blob[: len(blob) // 2])
    bad["truncated.wav"] = "truncated"
    corrupt = bytearray(blob)
    corrupt[8:16] = b"XXXXXXXX"             # 'WAVEfmt ' destroyed: a RIFF file of no known kind
    with open(os.path.join(folder, "corrupt.wav"), "wb") as f:
        f.write(bytes(corrupt))
    bad["corrupt.wav"] = "cannot decode"
    sf.write(os.path.join(folder, "zero.wav"), np.zeros(0, np.float32), sr)
    bad["zero.wav"] = "zero-length"
    return bad
