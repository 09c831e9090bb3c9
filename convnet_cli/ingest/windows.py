"""Fixed-length windows over recordings of any length, read in blocks (docs/CONFIG.md; used by make-batches and detect).

A recording is never decoded whole. For each run of windows that fits in one block (default 60 s, at most
MAX_BLOCK_SAMPLES samples at the features' rate, so 384 kHz files take shorter blocks), the samples the run
needs are decoded with soundfile (seek + read, a piece at a time), mixed to mono or one channel taken
(`channel`), resampled to the features' rate and turned into features; memory holds about one block
whatever the recording's length. A time-expanded recording (`time_expansion` F) is read at F times its
header's rate, so every time here is real time.

Resampling per block without seams: `scipy.signal.resample_poly` by the reduced ratio up/down designs a
symmetric FIR of half-length 10*max(up, down) (at the upsampled rate) and aligns output sample m with input
position m*down/up. A block whose first input sample is a multiple of `down` therefore yields exactly the
global output samples from (first/down)*up on, and each of those equals the whole-file result as long as
the block also holds the filter's reach of input on both sides (`margin`). Blocks are read with that margin
and trimmed, so a recording resampled in blocks equals the whole-file result (to float32 rounding).

Features: window k starts at sample round(k * hop_s * sample_rate) of the resampled signal and is
`duration` long. When every start in a run falls on the STFT hop grid (the usual case: hop_s * rate a
multiple of `hop`) and the feature kind is frame-local (`FeatureKind.frame_local`: a frame's values depend on
its own samples only), the STFT frames of the whole run are computed once by `compute_features` and each
window takes its W frames: the same numbers as computing the window alone (no padding, no per-clip
normalisation), without computing overlapping frames twice. A kind that smooths over time but splits into a
frame-local part and a per-clip part (`FeatureKind.splits`: PCEN's mel magnitudes, then its smoother from
each clip's first frame) shares the first and applies the second to each window's frames. Otherwise (another
kind that is not frame-local, or starts off the hop grid) each window is cut out and passed to
`compute_features` as a clip.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator

import numpy

from convnet_cli.ingest.audio import (CHANNEL_MIX, MAX_AMPLITUDE, AudioError, check_audio_file, check_channel,
                                     take_channel, true_rate, truncation_reason)
from convnet_cli.ingest.features import FeatureSpec, compute_features

BLOCK_S = 60.0                # seconds of audio per block
MAX_SAMPLE_RATE = 1_000_000   # above this a header is corrupt, not a recording
_PIECE_BYTES = 2 * 2 ** 20    # frames per compute_features call on a long run: ~2 MiB of frame tensor
MAX_BLOCK_SAMPLES = 2 ** 22   # a block's samples at the features' rate at most (16 MiB of float32)
DECODE_FRAMES = 2 ** 20       # frames decoded per soundfile read: a 4-channel file holds 4 times this at once


# ---- what a recording holds -----------------------------------------------------------------------

def _check_file(path):
    check_audio_file(path)   # before soundfile opens it: a FIFO, a device, an empty or undecodable file


def _open_error(path, exc):
    msg = str(exc).replace(f"Error opening {path!r}: ", "").strip().rstrip(".")
    msg = re.sub(r"^Error\s*:\s*", "", msg)
    if "Format not recognised" in msg:
        msg = "not an audio file soundfile can read (format not recognised)"
    return AudioError(path, f"cannot decode: {msg}")


def recording_info(path: str, time_expansion: float = 1.0) -> tuple[float, int]:
    """(duration in seconds, sample rate) from the header, without decoding, in real time: a time-expanded
    recording's rate is the header's times `time_expansion`. AudioError if unusable."""
    duration, sr, _ = recording_header(path, time_expansion)
    return duration, sr


def recording_header(path: str, time_expansion: float = 1.0) -> tuple[float, int, int]:
    """(duration in seconds, sample rate, channels) from the header, in real time (see recording_info)."""
    import soundfile as sf

    _check_file(path)
    try:
        info = sf.info(path)
    except (RuntimeError, sf.SoundFileError, OSError, ValueError, TypeError) as exc:
        raise _open_error(path, exc) from None
    reason = truncation_reason(getattr(info, "extra_info", ""))
    if reason:
        raise AudioError(path, reason)
    sr = int(info.samplerate)
    if sr <= 0 or sr > MAX_SAMPLE_RATE:
        raise AudioError(path, f"absurd sample rate {sr} Hz in the header (corrupt file?)")
    if info.frames <= 0:
        raise AudioError(path, "zero-length recording (no samples)")
    sr = true_rate(sr, time_expansion)
    if sr <= 0 or sr > MAX_SAMPLE_RATE:
        raise AudioError(path, f"--time-expansion {time_expansion:g} makes the rate {sr:,} Hz, beyond "
                               f"{MAX_SAMPLE_RATE:,} Hz; check the factor")
    return info.frames / sr, sr, int(info.channels)


def window_starts(duration_s: float, window_s: float, hop_s: float) -> numpy.ndarray:
    """float64 starts k*hop_s, k = 0, 1, … while start + window_s <= duration_s (last partial window dropped)."""
    if hop_s <= 0 or window_s <= 0:
        raise ValueError("window and hop must be positive")
    if duration_s + 1e-9 < window_s:
        return numpy.zeros(0, dtype=numpy.float64)
    n = int(math.floor((duration_s - window_s) / hop_s + 1e-9)) + 1
    return numpy.arange(n, dtype=numpy.float64) * hop_s


@dataclass(frozen=True)
class WindowSpec:
    """The windows cut from long recordings: `duration` seconds every `hop` seconds (make-batches
    --window-hop, detect's default slide). Stored on its own in batches.meta and checkpoints as
    {"duration": d, "hop": h}; batches.meta's features also hold the hop as features["window_hop"] (SPEC 11,
    and all that batch folders made before the window entry have)."""

    duration: float
    hop: float

    @classmethod
    def of(cls, spec, hop=None) -> "WindowSpec":
        """The features' duration, every `hop` seconds (default: half a window)."""
        return cls(float(spec.duration), float(hop) if hop is not None else float(spec.duration) / 2)

    @classmethod
    def stored(cls, window, features=None) -> "WindowSpec | None":
        """The WindowSpec a batches.meta / checkpoint recorded: its `window` entry, else an older folder's
        features["window_hop"]; None for a set of clips."""
        if isinstance(window, dict) and window.get("hop"):
            return cls(float(window["duration"]), float(window["hop"]))
        if isinstance(features, dict) and features.get("window_hop"):
            return cls(float(features["duration"]), float(features["window_hop"]))
        return None

    def to_dict(self) -> dict:
        return {"duration": float(self.duration), "hop": float(self.hop)}


def window_count(duration_s: float, window_s: float, hop_s: float) -> int:
    """len(window_starts(...)), by arithmetic: no array of starts is made."""
    if duration_s + 1e-9 < window_s:
        return 0
    return int(math.floor((duration_s - window_s) / hop_s + 1e-9)) + 1


OVERLAP_EPS = 1e-9    # seconds: overlaps (and fractions of them) this close count as equal


def window_overlaps(starts, window_s: float, selections):
    """For each selection that overlaps some window [t, t + window_s) of `starts` (sorted float64 seconds):
    (selection, lo, hi, overlap, hit): the windows starts[lo:hi] it can meet, the overlap of each in seconds,
    and where it is more than OVERLAP_EPS. The one measure of label_windows, class_overlap and the planners."""
    for s in selections:
        # windows [t, t + w) overlapping [begin, end): t < end and t + w > begin
        lo = int(numpy.searchsorted(starts, s.begin - window_s, side="right"))
        hi = int(numpy.searchsorted(starts, s.end, side="left"))
        if hi <= lo:
            continue
        t = starts[lo:hi]
        ov = numpy.minimum(t + window_s, s.end) - numpy.maximum(t, s.begin)
        yield s, lo, hi, ov, ov > OVERLAP_EPS


def covers_enough(ov, hit, window_s: float, selection, min_overlap) -> numpy.ndarray:
    """Where the overlaps `ov` (of window_overlaps) cover at least `min_overlap` of the shorter of window and
    selection; min_overlap None: any overlap (`hit`)."""
    if min_overlap is None:
        return hit
    return hit & (ov / min(window_s, selection.end - selection.begin) >= min_overlap - OVERLAP_EPS)


def class_overlap(starts, window_s: float, selections, min_overlap: float):
    """How the annotations `selections` (of one class) meet each window [t, t + window_s): (overlap, touched),
    (n,) float64 and bool: the largest overlap in seconds of one annotation that covers at least
    `min_overlap` of the shorter of the two (0 where none does), and whether any annotation overlaps the window
    at all. The rule of label_windows, for one class (multi-label planning takes every class so)."""
    starts = numpy.asarray(starts, dtype=numpy.float64)
    best = numpy.zeros(starts.shape[0], dtype=numpy.float64)
    touched = numpy.zeros(starts.shape[0], dtype=bool)
    for s, lo, hi, ov, hit in window_overlaps(starts, window_s, selections):
        touched[lo:hi] |= hit
        ok = covers_enough(ov, hit, window_s, s, min_overlap)
        best[lo:hi] = numpy.where(ok, numpy.maximum(best[lo:hi], ov), best[lo:hi])
    return best, touched


def label_windows(starts, window_s: float, selections, min_overlap: float = 0.5, background: str = "background"):
    """The label of each window (docs/CONFIG.md): list of str, or None for a window left out (ambiguous).

    starts: (n,) float64 seconds; selections: `Selection`s of one recording (any order). A window takes class c
    when an annotation of class c overlaps it by at least `min_overlap` of the shorter of the two; of several,
    the largest overlap wins (ties: the label first in sorted order). A window an annotation overlaps by less
    (and none enough) is None. Every other window is `background`.
    """
    starts = numpy.asarray(starts, dtype=numpy.float64)
    n = starts.shape[0]
    best = numpy.zeros(n, dtype=numpy.float64)         # largest qualifying overlap so far
    best_label = numpy.full(n, -1, dtype=numpy.int64)
    touched = numpy.zeros(n, dtype=bool)
    names = sorted({s.label for s in selections})
    index = {c: i for i, c in enumerate(names)}
    eps = OVERLAP_EPS
    for s, lo, hi, ov, hit in window_overlaps(starts, window_s, selections):
        touched[lo:hi] |= hit
        ok = covers_enough(ov, hit, window_s, s, min_overlap)
        c = index[s.label]
        cur_b, cur_l = best[lo:hi], best_label[lo:hi]
        better = ok & ((ov > cur_b + eps) | ((numpy.abs(ov - cur_b) <= eps) & ((cur_l < 0) | (c < cur_l))))
        cur_b[better] = ov[better]
        cur_l[better] = c
    out = []
    for i in range(n):
        if best_label[i] >= 0:
            out.append(names[best_label[i]])
        elif touched[i]:
            out.append(None)
        else:
            out.append(background)
    return out


# ---- decoding and resampling in blocks ------------------------------------------------------------

class RecordingReader:
    """One open recording: `read(o0, o1)` -> mono float32 samples [o0, o1) of the signal at `sr_out`
    (zeros past the end), decoding only the input those samples need.

    channel: None (or 'mix') averages the channels; N (1-based) reads channel N only (ChannelError, a
    ConfigError, when the file has fewer). time_expansion F: the file holds sound slowed down F times, so
    its samples are read as if at F times the header's rate."""

    def __init__(self, path: str, sr_out: int, channel=None, time_expansion: float = 1.0):
        import soundfile as sf

        self.path = path
        self.channel = None if channel == CHANNEL_MIX else channel
        _check_file(path)
        try:
            self.f = sf.SoundFile(path)
        except (RuntimeError, sf.SoundFileError, OSError, ValueError, TypeError) as exc:
            raise _open_error(path, exc) from None
        reason = truncation_reason(self.f.extra_info)   # libsndfile shortens a cut WAV's frames, says so in its log
        if reason:
            self.f.close()
            raise AudioError(path, reason)
        header_rate = int(self.f.samplerate)
        self.sr_in = true_rate(header_rate, time_expansion)
        if header_rate <= 0 or self.sr_in <= 0 or self.sr_in > MAX_SAMPLE_RATE:
            self.f.close()
            raise AudioError(path, f"absurd sample rate {self.sr_in} Hz (header {header_rate} Hz, time expansion "
                                   f"{time_expansion:g}; corrupt file?)")
        self.channels = int(self.f.channels)
        try:
            check_channel(path, self.channel, self.channels)
        except Exception:
            self.f.close()
            raise
        self.frames = int(self.f.frames)
        g = math.gcd(self.sr_in, int(sr_out))
        self.up, self.down = int(sr_out) // g, self.sr_in // g
        self.n_out = -(-self.frames * self.up // self.down)        # ceil, as resample_poly
        # the filter's reach in input samples (half_len / up), rounded up to a multiple of `down`
        reach = 10 * max(self.up, self.down) / self.up + 2
        self.margin = self.down * int(math.ceil(reach / self.down)) if self.up != self.down else 0

    def close(self):
        self.f.close()

    def _decode(self, a, b):
        """Mono float32 input samples [a, b) (0 <= a <= b <= frames)."""
        import soundfile as sf

        if b <= a:
            return numpy.zeros(0, dtype=numpy.float32)
        mono = numpy.empty(b - a, dtype=numpy.float32)
        try:
            self.f.seek(a)
            # a piece at a time: a many-channel file never holds more than DECODE_FRAMES frames of every channel
            for p in range(a, b, DECODE_FRAMES):
                q = min(b, p + DECODE_FRAMES)
                data = self.f.read(q - p, dtype="float32", always_2d=True)
                if data.shape[0] < q - p:
                    raise AudioError(self.path, f"truncated: the header promises {self.frames / self.sr_in:.3f} s, the "
                                                f"audio ends near {(p + data.shape[0]) / self.sr_in:.3f} s")
                mono[p - a:q - a] = take_channel(data, self.channel)
                del data
        except (RuntimeError, sf.SoundFileError, OSError, ValueError) as exc:
            raise AudioError(self.path, f"cannot decode at {a / self.sr_in:.3f} s: {exc}") from None
        if not numpy.isfinite(mono).all():
            raise AudioError(self.path, f"holds NaN or infinite samples near {a / self.sr_in:.3f} s")
        if mono.size and float(numpy.abs(mono).max()) > MAX_AMPLITUDE:   # features would overflow to inf
            raise AudioError(self.path, f"samples reach {float(numpy.abs(mono).max()):.3g} near {a / self.sr_in:.3f} s; "
                                        f"audio samples lie within ±1 and these exceed ±{MAX_AMPLITUDE:g}: damaged, or "
                                        "not audio")
        return numpy.ascontiguousarray(mono, dtype=numpy.float32)

    def read(self, o0: int, o1: int):
        """(o1 - o0,) float32: output-rate samples [o0, o1), zero past the end of the recording."""
        out = numpy.zeros(o1 - o0, dtype=numpy.float32)
        hi = min(o1, self.n_out)
        if hi <= o0:
            return out
        if self.up == self.down:
            out[:hi - o0] = self._decode(o0, hi)
            return out
        from scipy.signal import resample_poly

        g0, g1 = o0 // self.up, -(-hi // self.up)                   # polyphase groups holding [o0, hi)
        a = max(0, g0 * self.down - self.margin)                    # a multiple of `down`
        b = min(self.frames, g1 * self.down + self.margin)
        y = resample_poly(self._decode(a, b), self.up, self.down)
        off = (a // self.down) * self.up                             # global index of y[0]
        out[:hi - o0] = y[o0 - off:hi - off]
        return out


def resample_blocks(path: str, sr_out: int, block_s: float = BLOCK_S, channel=None,
                    time_expansion: float = 1.0) -> Iterator[numpy.ndarray]:
    """The whole recording at `sr_out`, mono float32, as consecutive blocks (for tests and benchmarks)."""
    r = RecordingReader(path, sr_out, channel, time_expansion)
    try:
        step = max(1, int(round(block_s * sr_out)))
        for o0 in range(0, r.n_out, step):
            yield r.read(o0, min(o0 + step, r.n_out))
    finally:
        r.close()


# ---- features of windows --------------------------------------------------------------------------

def _run_features(buf, offsets, spec: FeatureSpec, xp):
    """Features of the windows buf[d:d + N] for d in offsets: (n, 1, H, W) float32 on xp."""
    n_win = spec.num_samples
    offsets = numpy.asarray(offsets, dtype=numpy.int64)
    if offsets.size:                      # only the stretch these windows cover
        buf = buf[int(offsets[0]):int(offsets[-1]) + n_win]
        offsets = offsets - offsets[0]
    if offsets.size and spec.shares_frames and not (offsets % spec.hop).any():
        # one STFT over the run, in pieces of P frames (~2 MiB of frame tensor each); windows take their frames
        total = 1 + (buf.shape[0] - spec.n_fft) // spec.hop
        p = max(1, _PIECE_BYTES // (spec.n_fft * 4))
        full = total // p
        parts = []
        if full:
            view = numpy.lib.stride_tricks.as_strided(
                buf, shape=(full, (p - 1) * spec.hop + spec.n_fft), strides=(p * spec.hop * 4, 4))
            f = compute_features(xp.asarray(view), spec, xp, frames_only=True)   # (full, 1, H, p)
            parts.append(f[:, 0].transpose(1, 0, 2).reshape(f.shape[2], full * p))
        if total > full * p:
            rest = buf[full * p * spec.hop:(total - 1) * spec.hop + spec.n_fft]
            parts.append(compute_features(xp.asarray(rest[None]), spec, xp, frames_only=True)[0, 0])
        frames = xp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]   # (H, total)
        first = xp.asarray(offsets // spec.hop)
        idx = first[:, None] + xp.arange(spec.num_frames)[None, :]
        feats = frames[:, idx].transpose(1, 0, 2)                    # (n, H, W)
        if not spec.frame_local:                                      # the kind's per-clip part, window by window
            kind = spec.feature_kind
            feats = kind.clip_part(xp.ascontiguousarray(feats.transpose(0, 2, 1)), spec, xp).transpose(0, 2, 1)
        return feats[:, None]                                         # (n, 1, H, W)
    sig = numpy.stack([buf[d:d + n_win] for d in offsets]) if offsets.size else numpy.zeros((0, n_win), numpy.float32)
    return compute_features(xp.asarray(sig), spec, xp)


def iter_window_features(path: str, spec: FeatureSpec, hop_s: float, batch: int = 256, xp=numpy,
                         block_s: float | None = None, channel=None,
                         time_expansion: float = 1.0) -> Iterator[tuple[numpy.ndarray, numpy.ndarray]]:
    """Yield (starts_s float64 (n,), features float32 (n, 1, H, W) on xp), n <= batch, for every window of
    window_starts(duration, spec.duration, hop_s), in order. Memory bounded whatever the length.
    channel, time_expansion: as RecordingReader's."""
    yield from iter_selected_window_features(path, spec, hop_s, None, batch, xp, block_s, channel=channel,
                                             time_expansion=time_expansion)


def iter_selected_window_features(path: str, spec: FeatureSpec, hop_s: float, keep=None, batch: int = 256,
                                  xp=numpy, block_s: float | None = None, on_block=None, channel=None,
                                  time_expansion: float = 1.0):
    """As iter_window_features, for the windows whose indices are in `keep` (sorted ints; None = all).

    Only the blocks those windows need are decoded. on_block(t) is called after each block, t the recording
    time (s) processed so far. AudioError for a file that cannot be decoded (at open, or part way through).
    """
    reader = RecordingReader(path, spec.sample_rate, channel, time_expansion)
    try:
        duration = reader.frames / reader.sr_in
        starts = window_starts(duration, spec.duration, hop_s)
        if keep is None:
            keep = numpy.arange(starts.shape[0], dtype=numpy.int64)
        else:
            keep = numpy.asarray(keep, dtype=numpy.int64)
            if keep.size and (keep.min() < 0 or keep.max() >= starts.shape[0]):
                raise ValueError(f"window index out of range 0..{starts.shape[0] - 1}")
        sr = spec.sample_rate
        n_win = spec.num_samples
        block = max(min(int(round((block_s or BLOCK_S) * sr)), MAX_BLOCK_SAMPLES), 2 * n_win)
        first_sample = numpy.round(keep * hop_s * sr).astype(numpy.int64) if keep.size else keep
        i = 0
        while i < keep.size:
            s0 = int(first_sample[i])
            j = i + int(numpy.searchsorted(first_sample[i:], s0 + block - n_win, side="right"))
            j = max(j, i + 1)
            buf = reader.read(s0, int(first_sample[j - 1]) + n_win)
            for a in range(i, j, batch):
                b = min(a + batch, j)
                feats = _run_features(buf, first_sample[a:b] - s0, spec, xp)
                yield starts[keep[a:b]], feats
            if on_block is not None:
                on_block((int(first_sample[j - 1]) + n_win) / sr)
            i = j
    finally:
        reader.close()
