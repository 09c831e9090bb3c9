"""Synthesised long recordings with calls at known times, and annotation tables written the way Raven Pro
writes them: one row per view (`Waveform 1`, `Spectrogram 1`) under one Selection number, columns the tool
does not use, Windows line ends and a UTF-8 BOM."""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf

RAVEN_HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                "High Freq (Hz)", "Delta Time (s)", "Delta Freq (Hz)", "Avg Power Density (dB FS/Hz)"]


def write_recording(path, seconds, sr=2000, calls=(), seed=0, channels=1, block_s=60.0, subtype=None,
                    noise=0.05):
    """Write `seconds` of white noise with tone calls [(begin, end, freq Hz)], in blocks (never whole).

    Each call is a tone of amplitude 0.5 with a 5 ms fade, so a window's content is known from the times.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    fmt = os.path.splitext(path)[1][1:].upper()
    fmt = {"AIF": "AIFF"}.get(fmt, fmt)
    sub = subtype or ("PCM_16" if fmt in ("FLAC", "WAV", "AIFF") else None)
    step = max(1, int(block_s * sr))
    with sf.SoundFile(path, "w", samplerate=sr, channels=channels, format=fmt, subtype=sub) as f:
        for a in range(0, n, step):
            b = min(n, a + step)
            t = np.arange(a, b) / sr
            x = noise * rng.standard_normal(b - a)
            for begin, end, freq in calls:
                on = (t >= begin) & (t < end)
                if on.any():
                    fade = np.clip(np.minimum(t - begin, end - t) / 0.005, 0, 1)
                    x = x + np.where(on, 0.5 * fade * np.sin(2 * np.pi * freq * t), 0.0)
            x = x.astype(np.float32)
            if channels > 1:
                x = np.stack([x] * channels, axis=1)
            f.write(x)
    return path


def raven_text(selections, label_col="Annotation", extra_cols=(), views=True, bom=True, crlf=True,
               file_col=None, header=None):
    """A Raven selection table as Raven writes it.

    selections: [(begin, end, label, low, high)] or with a 6th item, the file name for `file_col`
    ('Begin File' or 'Begin Path'). extra_cols: [(name, value)] appended to every row.
    """
    head = list(header or RAVEN_HEADER)
    if file_col:
        head.append(file_col)
    if label_col:
        head.append(label_col)
    head += [c for c, _ in extra_cols]
    rows = ["\t".join(head)]
    for i, sel in enumerate(selections, start=1):
        begin, end, label, low, high = sel[:5]
        for view in (("Waveform 1", "Spectrogram 1") if views else ("Spectrogram 1",)):
            lo, hi = (0.0, 1000.0) if view.startswith("Waveform") else (low, high)
            cells = [str(i), view, "1", f"{begin:.6f}", f"{end:.6f}", f"{lo:.3f}", f"{hi:.3f}",
                     f"{end - begin:.6f}", f"{hi - lo:.3f}", "-42.17"]
            if file_col:
                cells.append(sel[5])
            if label_col:
                cells.append(label)
            cells += [v for _, v in extra_cols]
            rows.append("\t".join(cells))
    nl = "\r\n" if crlf else "\n"
    return ("\ufeff" if bom else "") + nl.join(rows) + nl


def write_raven(path, selections, **kw):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(raven_text(selections, **kw))
    return path


def write_csv_table(path, rows, header=("filename", "start", "end", "label")):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            f.write(",".join(str(v) for v in r) + "\n")
    return path
