"""Per reviewed item: the clip, its listening copy and its spectrogram PNG (docs/REVIEW.md).

- Clip (`clips/`): the event with `context` seconds on each side, cut from the recording at its own sample
  rate, mono (channels mixed, as make-batches and detect hear them), in the recording's sample format where WAV
  has it (else 24-bit). Only that stretch is decoded (ingest/windows.py's block reader). Near a recording's
  start or end the context is what there is (the clip is clipped there; media.json says so). A clip is at most
  MAX_CLIP_S seconds and MAX_CLIP_SAMPLES samples (an event merged over minutes): a longer one keeps its start.
- Listening copy (`listen/`): what the page plays, since browsers do not play every rate (Chromium refuses a
  2 kHz WAV) and ultrasound is inaudible. A recording above 48 kHz is slowed 10 times (time expansion: its
  samples played at rate/10, as a bat detector's time-expanded output; 40 kHz becomes 4 kHz); then the rate is
  kept when it is one of LISTEN_RATES, is raised to 16 kHz below 8 kHz, and is otherwise resampled to the
  next rate of LISTEN_RATES up (48 kHz at most). 16-bit, peak-normalised to -1 dBFS (gain at most +40 dB), so a
  faint call is heard; the clip keeps the recording's level.
- Spectrogram (`images/`): IMG_W x IMG_H pixels, time across, frequency up from 0 to the recording's Nyquist
  frequency, dB over an 80 dB range below the clip's loudest bins, Hann windows of about 25 ms (a power of two
  from 128 to 1024 samples). The context is drawn dimmed, the event full bright between two white lines, and
  the event's band (detect's fmin..fmax) marked by orange lines when it is narrower than the image. Axes are
  drawn by the page, as text, so the PNG needs no font.

PNGs are written here (an 8-bit palette PNG from a NumPy image with zlib and struct) rather than with
matplotlib: review must work without the `plot` extra, the files are the same wherever they are made (the
tests read them back), and it is ~3.5x faster (60-100 ms an image against 230-360 ms for a bare matplotlib
specgram figure, on 2 shared cores).
"""
from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np

from convnet_cli.fileio import atomic_write

MAX_CLIP_S = 120.0
MAX_CLIP_SAMPLES = 2 ** 24            # 64 MB of float32: 67 s at 250 kHz, 22 s at 768 kHz
LISTEN_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
EXPAND_ABOVE = 48000                  # a rate above this is ultrasound recording: slowed down
EXPANSION = 10
LOW_RATE_TO = 16000
IMG_W, IMG_H = 900, 256
DB_RANGE = 80.0
_LEVELS = 120                          # palette: 0..119 the colour map, 120..239 dimmed, then the marks
_EDGE, _BAND = 240, 241


# ---- listening copies --------------------------------------------------------------------------------

def listening_rate(sr: int):
    """(slowed, rate): the time expansion factor (1 or EXPANSION) and the rate the copy is played at."""
    slowed = EXPANSION if sr > EXPAND_ABOVE else 1
    eff = sr / slowed
    if eff in LISTEN_RATES:
        return slowed, int(eff)
    if eff < LISTEN_RATES[0]:
        return slowed, LOW_RATE_TO
    return slowed, next((r for r in LISTEN_RATES if r >= eff), LISTEN_RATES[-1])


def resample(x, sr_from, sr_to):
    """x (n,) float32 at sr_from -> at sr_to (polyphase; an FFT resample when the reduced ratio is huge)."""
    from fractions import Fraction

    from scipy.signal import resample as fft_resample, resample_poly

    ratio = Fraction(int(round(sr_to * 1000)), int(round(sr_from * 1000)))
    if ratio == 1 or x.size == 0:
        return x.astype(np.float32)
    if max(ratio.numerator, ratio.denominator) <= 2000:
        return resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)
    n = max(1, int(round(x.size * sr_to / sr_from)))
    return fft_resample(x, n).astype(np.float32)


def listening_copy(x, sr: int):
    """(samples, rate, slowed) of the copy the page plays: x slowed and resampled by `listening_rate`'s rule,
    peak-normalised."""
    slowed, rate = listening_rate(sr)
    y = resample(np.asarray(x, dtype=np.float32), sr / slowed, rate)
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak > 0:
        y = y * min(100.0, 10 ** (-1 / 20) / peak)
    return np.clip(y, -1.0, 1.0).astype(np.float32), rate, slowed


# ---- WAV ------------------------------------------------------------------------------------------------

def wav_bytes(x, sr: int, subtype: str = "PCM_16") -> bytes:
    import soundfile as sf

    if not sf.check_format("WAV", subtype):
        subtype = "PCM_24"
    buf = io.BytesIO()
    sf.write(buf, np.asarray(x, dtype=np.float32), int(sr), format="WAV", subtype=subtype)
    return buf.getvalue()


# ---- the clip -------------------------------------------------------------------------------------------

def cut_clip(path: str, begin: float, end: float, context: float, channel=None, time_expansion: float = 1.0):
    """(samples (n,) float32 mono at the recording's rate, facts): the event [begin, end] with `context`
    seconds each side, clipped at the recording's ends and to MAX_CLIP_S / MAX_CLIP_SAMPLES. Only that
    stretch is decoded: of `channel` (1-based; None: the channels mixed), at the header's rate times
    `time_expansion` (the true rate of a time-expanded recording; times are real time)."""
    from convnet_cli.errors import DataError
    from convnet_cli.ingest.windows import RecordingReader, recording_info

    duration, sr = recording_info(path, time_expansion)
    if begin >= duration:
        raise DataError(f"{path}: the detection at {begin:.3f} s starts after the recording's end "
                        f"({duration:.3f} s); is this the recording detect read?")
    t0, t1 = max(0.0, begin - context), min(duration, end + context)
    longest = min(MAX_CLIP_S, MAX_CLIP_SAMPLES / sr)
    truncated = t1 - t0 > longest
    if truncated:
        t1 = t0 + longest
    reader = RecordingReader(path, sr, channel, time_expansion)
    try:
        s0 = int(round(t0 * sr))
        s1 = max(s0 + 1, min(reader.frames, int(round(t1 * sr))))
        x = reader.read(s0, s1)
        subtype = reader.f.subtype
    finally:
        reader.close()
    facts = {"sample_rate": int(sr), "clip_begin": round(s0 / sr, 6), "clip_end": round(s1 / sr, 6),
             "duration": float(duration), "at_start": begin - context < 0, "at_end": end + context > duration,
             "truncated": bool(truncated), "subtype": subtype}
    return x, facts


# ---- spectrogram PNG ----------------------------------------------------------------------------------

def _window_length(sr: int) -> int:
    n = 2 ** int(round(math.log2(max(1.0, 0.025 * sr))))
    return int(min(1024, max(128, n)))


def _pool(a, n_out: int, axis: int):
    """Max over groups of `a` along `axis` down to n_out (or nearest-index up to it when shorter)."""
    n = a.shape[axis]
    if n >= n_out:
        starts = (np.arange(n_out) * n) // n_out
        return np.maximum.reduceat(a, starts, axis=axis)
    idx = np.minimum(n - 1, (np.arange(n_out) * n) // n_out)
    return np.take(a, idx, axis=axis)


def spectrogram_db(x, sr: int, width: int = IMG_W, height: int = IMG_H):
    """(height, width) float32 dB, row 0 the highest frequency (sr/2), column 0 the clip's first sample."""
    win = _window_length(sr)
    nfft = max(512, win)
    x = np.asarray(x, dtype=np.float32)
    if x.size < win:
        x = np.pad(x, (0, win - x.size))
    hop = max(1, min(win // 2, (x.size - win) // max(1, width - 1)))
    frames = 1 + (x.size - win) // hop
    hann = np.hanning(win).astype(np.float32)
    cols = np.full((nfft // 2 + 1, min(frames, width)), 0.0, dtype=np.float32)
    col_of = (np.arange(frames) * cols.shape[1]) // frames
    step = 4096
    for a in range(0, frames, step):            # bounded memory: ~4096 frames at a time
        b = min(frames, a + step)
        idx = np.arange(a, b)[:, None] * hop + np.arange(win)[None, :]
        p = np.abs(np.fft.rfft(x[idx] * hann, n=nfft, axis=1)).astype(np.float32) ** 2   # (frames, bins)
        c = col_of[a:b]
        starts = np.r_[0, np.flatnonzero(np.diff(c)) + 1]
        red = np.maximum.reduceat(p, starts, axis=0)                                       # (unique cols, bins)
        cols[:, c[starts]] = np.maximum(cols[:, c[starts]], red.T)
    img = _pool(_pool(cols, height, 0), width, 1)[::-1]
    return (10.0 * np.log10(img + 1e-20)).astype(np.float32)


def _palette():
    anchors = np.array([[48, 18, 59], [40, 90, 160], [32, 160, 150], [120, 205, 90], [250, 230, 40]], float)
    t = np.linspace(0, 1, _LEVELS)
    pos = t * (len(anchors) - 1)
    i = np.minimum(len(anchors) - 2, pos.astype(int))
    f = (pos - i)[:, None]
    bright = anchors[i] * (1 - f) + anchors[i + 1] * f
    dim = bright * 0.5
    marks = np.array([[255, 255, 255], [255, 150, 40]], float)
    return np.round(np.vstack([bright, dim, marks])).clip(0, 255).astype(np.uint8)


def png_bytes(pixels, palette) -> bytes:
    """An 8-bit palette PNG: pixels (H, W) uint8 indices into palette (K, 3) uint8 RGB."""
    h, w = pixels.shape
    raw = np.zeros((h, w + 1), dtype=np.uint8)   # filter byte 0 (none) at the start of every row
    raw[:, 1:] = pixels

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", palette.tobytes()) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def spectrogram_png(x, sr: int, clip_begin: float, clip_end: float, begin: float, end: float,
                    low_hz=None, high_hz=None, width: int = IMG_W, height: int = IMG_H) -> bytes:
    """The spectrogram of a clip as a PNG with the event [begin, end] (recording seconds) marked."""
    db = spectrogram_db(x, sr, width, height)
    top = float(np.percentile(db, 99.9))
    level = np.clip((db - (top - DB_RANGE)) / DB_RANGE, 0, 1)
    px = np.round(level * (_LEVELS - 1)).astype(np.uint8)
    span = max(clip_end - clip_begin, 1e-9)
    c0 = int(np.clip(round((begin - clip_begin) / span * width), 0, width - 1))
    c1 = int(np.clip(round((end - clip_begin) / span * width), c0 + 1, width))
    outside = np.ones(width, dtype=bool)
    outside[c0:c1] = False
    px[:, outside] += _LEVELS
    nyq = sr / 2.0
    lo = 0.0 if low_hz is None else float(low_hz)
    hi = nyq if high_hz is None else float(high_hz)
    if lo > 0 or hi < nyq:
        for f in (lo, min(hi, nyq)):
            r = int(np.clip(round((1 - f / nyq) * (height - 1)), 0, height - 1))
            px[r, c0:c1] = _BAND
    for c in (c0, c1 - 1):
        px[:, max(0, c - 1):c + 1] = _EDGE
    return png_bytes(px, _palette())


# ---- one item ---------------------------------------------------------------------------------------------

def make_media(item, review_dir: str, context: float, time_expansion: float = 1.0) -> dict:
    """Write an item's clip, listening copy and PNG (each atomically) -> its facts for media.json. The clip
    is of the item's channel (mixed when it has none), a time-expanded recording read at its true rate."""
    import os

    x, facts = cut_clip(item.path, item.begin, item.end, context, item.channel, time_expansion)
    sr = facts["sample_rate"]
    for sub in ("clips", "listen", "images"):
        os.makedirs(os.path.join(review_dir, sub), exist_ok=True)
    clip = wav_bytes(x, sr, facts.pop("subtype"))
    atomic_write(os.path.join(review_dir, item.clip), lambda f: f.write(clip))
    y, rate, slowed = listening_copy(x, sr)
    listen = wav_bytes(y, rate)
    atomic_write(os.path.join(review_dir, item.listen), lambda f: f.write(listen))
    png = spectrogram_png(x, sr, facts["clip_begin"], facts["clip_end"], item.begin, item.end, item.low_freq,
                          item.high_freq)
    atomic_write(os.path.join(review_dir, item.image), lambda f: f.write(png))
    facts.update(listen=item.listen, listen_rate=int(rate), slowed=int(slowed), nyquist=sr / 2.0)
    return facts
