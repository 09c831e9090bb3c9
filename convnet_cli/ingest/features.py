"""Spectrogram features of fixed-length clips, computed on `xp` (NumPy on the CPU, CuPy on a GPU).

`compute_features(signals, spec, xp)`: signals (n, samples) float32 -> (n, 1, H, W) float32, where
W = 1 + (samples - n_fft) // hop frames taken without padding (frame t covers samples
[t*hop, t*hop + n_fft)), and H is the frequency axis with the lowest frequency at row 0.

Choices (fixed; they are part of what a trained net has seen):
- window: periodic (DFT-even) `hann`, `hamming` or `blackman`, as scipy.signal.get_window(name, n_fft)
  and torch.hann_window(n_fft) (periodic=True) make them.
- `spec`: STFT magnitude |X|, H = n_fft // 2 + 1.  `logspec`: log(|X| + 1e-6) (natural log).
- `mel`: an HTK-scale mel filterbank (mel = 2595 log10(1 + f/700)) applied to the power spectrum |X|^2:
  `n_mels` triangles with peak 1 (no area normalisation), their corners equally spaced in mel from
  `fmin` to `fmax` (Nyquist when null), evaluated at the FFT bin frequencies k * sample_rate / n_fft —
  the same matrix as torchaudio.functional.melscale_fbanks(norm=None, mel_scale='htk').
  H = n_mels.  `logmel`: log(mel + 1e-6) (natural log).
- `mfcc`: the type-II DCT with orthonormal scaling (scipy.fft.dct(type=2, norm='ortho')) of the logmel
  column, first `n_mfcc` coefficients; H = n_mfcc.
- No pre-emphasis, no centering, no per-clip normalisation (the batch meta's mean/std does that).

Each kind is a `FeatureKind` class registered with `@register_kind`: it declares its own keys (besides the
common STFT keys), its image height, its checks, whether it is frame-local, and its transform of the power
spectrum. Adding a kind is one class here and its test (docs/CONTRIBUTING.md).

FeatureSpec is the validated form of the `features` section (docs/CONFIG.md, 'Features'); every consumer gets one,
never a raw dict.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy

from convnet_cli.errors import ConfigError, did_you_mean

WINDOWS = ("hann", "hamming", "blackman")
# normalize: per value of a case (cuda-convnet's data_mean), per frequency row, or one for all (docs/CONFIG.md)
NORMALIZATIONS = ("pixel", "band", "global")
LOG_FLOOR = 1e-6
# Clips per FFT call: the (chunk, W, n_fft) frame tensor is kept near this size. On the host ~2 MiB keeps
# frames, spectrum and power in cache (twice as fast as 48 MiB chunks); a GPU wants big launches.
_FRAME_BYTES = 2 * 2 ** 20
_GPU_FRAME_BYTES = 256 * 2 ** 20


class FeatureSpec:
    """How a clip becomes a (1, H, W) array. Build it with `from_dict` (validates) or the defaults.

    The common keys are attributes; so is every key a feature kind declares (`spec.n_mels`, `spec.n_mfcc`),
    with the kind's default where the spec was not given it. Immutable and hashable (tables are cached by it).
    """

    __slots__ = ("sample_rate", "duration", "kind", "n_fft", "hop", "window", "normalize", "_kind_keys")

    def __init__(self, sample_rate: int = 16000, duration: float = 2.0, kind: str = "logmel", n_fft: int = 512,
                 hop: int = 160, window: str = "hann", normalize: str | None = None, **kind_keys):
        for name, value in (("sample_rate", sample_rate), ("duration", duration), ("kind", kind),
                            ("n_fft", n_fft), ("hop", hop), ("window", window), ("normalize", normalize)):
            object.__setattr__(self, name, value)
        unknown = [k for k in kind_keys if k not in KIND_KEYS]
        if unknown:
            raise TypeError(f"FeatureSpec: unknown key {unknown[0]!r}")
        values = {k: key.default for k, key in KIND_KEYS.items()}
        values.update(kind_keys)
        object.__setattr__(self, "_kind_keys", tuple(values.items()))

    def __getattr__(self, name):
        # only reached for names that are not slots: the keys the kinds declare
        for k, v in object.__getattribute__(self, "_kind_keys"):
            if k == name:
                return v
        raise AttributeError(name)

    def __setattr__(self, name, value):
        raise AttributeError("FeatureSpec is immutable")

    def __eq__(self, other):
        return isinstance(other, FeatureSpec) and self._items() == other._items()

    def __hash__(self):
        return hash(self._items())

    def __repr__(self):
        return "FeatureSpec(" + ", ".join(f"{k}={v!r}" for k, v in self._items()) + ")"

    def _items(self) -> tuple:
        return tuple((k, getattr(self, k)) for k in COMMON_KEYS) + self._kind_keys

    def __reduce__(self):   # worker processes get specs by pickling
        return (_spec_from_items, (self._items(),))

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def feature_kind(self) -> "FeatureKind":
        """The registered class of `kind` (an instance)."""
        return KIND_CLASSES[self.kind]

    @property
    def num_samples(self) -> int:
        """Samples per clip after resampling and crop/pad."""
        return int(round(self.duration * self.sample_rate))

    @property
    def num_frames(self) -> int:
        """W: STFT frames per clip, taken without padding."""
        return 1 + (self.num_samples - self.n_fft) // self.hop

    @property
    def num_bins(self) -> int:
        """H: rows of the feature image."""
        return self.feature_kind.num_bins(self)

    @property
    def shape(self) -> tuple:
        """(1, H, W) of one case."""
        return (1, self.num_bins, self.num_frames)

    @property
    def frame_local(self) -> bool:
        """True when each frame's values depend on its own samples only (so overlapping windows of a long
        recording may share frames: ingest/windows.py)."""
        return self.feature_kind.frame_local

    @property
    def shares_frames(self) -> bool:
        """True when overlapping windows of a long recording may share the frames of one STFT run: the kind is
        frame-local, or it splits into a frame-local part and a per-clip part (FeatureKind.splits)."""
        return self.feature_kind.frame_local or self.feature_kind.splits

    @property
    def fmax_hz(self) -> float:
        return float(self.sample_rate) / 2 if self.fmax is None else float(self.fmax)

    @property
    def normalization(self) -> str:
        """How make-batches' statistics were (are to be) taken: `normalize`, or `pixel` where a batch folder
        made before the key records none (cuda-convnet's per-value data_mean/data_std)."""
        return self.normalize or "pixel"

    def replace(self, **changes) -> "FeatureSpec":
        """A copy with some keys changed (unchecked: from_dict(copy.to_dict()) checks)."""
        return FeatureSpec(**{**dict(self._items()), **changes})

    def to_dict(self) -> dict:
        """Plain dict of the features keys (docs/CONFIG.md) (what batches.meta and checkpoints store): the
        common keys, the keys of section 2 (which every batch folder has recorded), the keys of this spec's
        kind, and any other key not at its default. `normalize` only once chosen."""
        own = set(self.feature_kind.keys) | set(ALWAYS_STORED)
        d = {k: v for k, v in self._items()
             if k in COMMON_KEYS and k != "normalize" or k in own or v != _KEYS[k].default}
        for k, v in d.items():
            kind = _KEYS[k].kind
            if kind == "float" or (kind == "float_or_null" and v is not None):
                d[k] = float(v)
        return d

    # ---- parsing -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d, source: str = "features") -> "FeatureSpec":
        """Validate a mapping of features keys (missing keys take their defaults).

        Errors are ConfigError naming `source` (the YAML file or '--features flags'), the key, its line
        when `d` came from convnet_cli.config.yamlio, and the fix.
        """
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: features must be a mapping of keys ({', '.join(_KEYS)}), "
                              f"not {type(d).__name__}")
        lines = getattr(d, "lines", {}) or {}
        if any(k in NOT_FEATURE_KEYS for k in d):   # stored beside the features (batches.meta, checkpoints)
            d = {k: v for k, v in d.items() if k not in NOT_FEATURE_KEYS}

        def at(key):
            line = lines.get(key)
            return f" (line {line})" if line else ""

        for key in d:
            if key not in _KEYS:
                raise ConfigError(f"{source}: unknown features key '{key}'{did_you_mean(key, _KEYS)}{at(key)}; "
                                  f"keys: {', '.join(_KEYS)}")
        values = {}
        for key, k in _KEYS.items():
            if key not in d:
                continue
            v = d[key]
            try:
                values[key] = _convert(v, k.kind, k.min, KINDS if key == "kind" else k.choices)
            except ValueError as exc:
                raise ConfigError(f"{source}: {key} {v!r} {exc}{at(key)}") from None
        spec = cls(**values)
        spec._check(source, at)
        return spec

    @classmethod
    def from_file(cls, features_file=None, overrides=None) -> "FeatureSpec":
        """--features FILE.yaml (its keys at the top, or under a `features:` key), then `overrides` (the
        make-batches flags, None where not given) on top. ConfigError naming the file and line."""
        from convnet_cli.config.yamlio import load_yaml_text, read_text

        values, source = {}, "features flags"
        if features_file:
            source = os.path.basename(features_file)
            doc = load_yaml_text(read_text(features_file, "features"), source)
            if doc is None:
                doc = {}
            if isinstance(doc, dict) and set(doc) == {"features"} and isinstance(doc["features"], dict):
                doc = doc["features"]
            if not isinstance(doc, dict):
                raise ConfigError(f"{source}: must be a mapping of feature keys (sample_rate, kind, n_mels, …)")
            cls.from_dict(doc, source)  # errors with the file's line numbers before flags mix in
            values = dict(doc)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if given:
            source = f"{source} + flags" if features_file else "features flags"
        values.update(given)
        return cls.from_dict(values, source)

    def _check(self, source, at=lambda key: ""):
        if self.sample_rate > MAX_RATE:
            raise ConfigError(f"{source}: sample_rate {self.sample_rate} is above {MAX_RATE:,} Hz{at('sample_rate')}; "
                              "give the rate the features should use (e.g. 16000)")
        if self.num_samples > MAX_CLIP_SAMPLES:
            raise ConfigError(
                f"{source}: duration {self.duration:g} s at {self.sample_rate} Hz is {self.num_samples:,} samples per "
                f"clip ({self.num_samples * 4 / 2**30:.3g} GiB; at most {MAX_CLIP_SAMPLES * 4 / 2**30:.3g} GiB){at('duration')}; "
                "clips are held whole: lower duration, or cut long recordings into windows with make-batches "
                "--annotations")
        if self.num_samples < self.n_fft:
            raise ConfigError(
                f"{source}: duration {self.duration:g} s at {self.sample_rate} Hz is {self.num_samples} samples, "
                f"fewer than n_fft {self.n_fft}{at('duration')}; raise duration or lower n_fft")
        self.feature_kind.check(self, source, at)


def _spec_from_items(items) -> FeatureSpec:
    return FeatureSpec(**dict(items))


# A clip is decoded and held whole: 2^27 float32 samples (512 MiB, 2.3 hours at 16 kHz) is the most one may be.
MAX_CLIP_SAMPLES = 1 << 27
MAX_RATE = 1_536_000   # as ingest/audio.py's MAX_SAMPLE_RATE


@dataclass(frozen=True)
class FeatureKey:
    """One features key: kind 'int', 'float', 'float_or_null' or 'str'; the smallest value allowed; the
    choices of a 'str'; the default."""

    kind: str
    min: float | None = None
    choices: tuple = ()
    default: object = None


# The keys every kind reads (the STFT and the clip); a kind's own keys are declared by its class below.
_COMMON = {
    "sample_rate": FeatureKey("int", 100, default=16000),
    "duration": FeatureKey("float", 1e-9, default=2.0),
    "kind": FeatureKey("str", default="logmel"),
    "n_fft": FeatureKey("int", 4, default=512),
    "hop": FeatureKey("int", 1, default=160),
    "window": FeatureKey("str", choices=WINDOWS, default="hann"),
    "normalize": FeatureKey("str_or_null", choices=NORMALIZATIONS, default=None),
}
# Stored in every features dict whatever the kind, as batch folders always have (SPEC section 2).
ALWAYS_STORED = ("n_mels", "fmin", "fmax", "n_mfcc")
COMMON_KEYS = tuple(_COMMON)
# Keys make-batches --annotations stores in batches.meta `features` next to the features keys (the window
# hop, SPEC section 11; the WindowSpec's own `window` entry beside it is what convnet reads); they are not
# feature settings, and a features mapping may carry them.
NOT_FEATURE_KEYS = ("window_hop",)


# ---- feature kinds --------------------------------------------------------------------------------

KIND_CLASSES: dict = {}   # kind name -> FeatureKind instance, in registration order
KIND_KEYS: dict = {}      # every key a registered kind declares -> FeatureKey
_KEYS: dict = {}          # common keys, then the kinds' keys: what a features mapping may hold


def register_kind(cls):
    """Class decorator: make a FeatureKind available as `kind: <cls.name>` (its keys become features keys)."""
    kind = cls()
    for key, k in cls.keys.items():
        have = KIND_KEYS.get(key)
        if have is not None and have != k:
            raise TypeError(f"feature kind {cls.name}: key {key!r} is declared differently by another kind")
        KIND_KEYS[key] = k
    KIND_CLASSES[cls.name] = kind
    _KEYS.clear()
    _KEYS.update(_COMMON)
    _KEYS.update(KIND_KEYS)
    global KINDS, KEYS
    KINDS = tuple(KIND_CLASSES)
    KEYS = tuple(_KEYS)
    return cls


class FeatureKind:
    """A way to turn the power spectrum of a clip's frames into its feature image.

    A kind declares its own features keys (`keys`, besides the common ones), whether each frame's values
    depend only on that frame's samples (`frame_local`: then windows of a long recording may share frames,
    see ingest/windows.py; a kind that smooths over time, such as PCEN, must say False), the height of its
    image (`num_bins`), its setting checks (`check`) and the transform itself (`from_power`), written once
    for NumPy and CuPy (`xp`).

    A kind that is not frame-local may still let windows share the frame-local start of its transform:
    `splits = True` says that from_power(p) == clip_part(frame_part(p)), where frame_part depends on each
    frame alone (PCEN: the mel magnitudes) and clip_part on the clip's frames together (PCEN's smoother,
    which starts at each clip's first frame). Windows then share frame_part and each takes clip_part over
    its own frames: the numbers of the clip path, without computing overlapping frames twice."""

    name = ""
    keys: dict = {}
    frame_local = True
    splits = False

    def frame_part(self, power, spec, xp):
        """(m, W, F) power -> (m, W, H): the frame-local part of from_power (all of it for a frame-local kind)."""
        return self.from_power(power, spec, xp)

    def clip_part(self, frames, spec, xp):
        """(m, W, H) frame_part of m clips -> their (m, W, H) image (nothing to do for a frame-local kind)."""
        return frames

    def num_bins(self, spec) -> int:
        raise NotImplementedError

    def check(self, spec, source: str, at) -> None:
        """Raise ConfigError (naming `source`, the key and `at(key)`) for settings this kind cannot use."""

    def from_power(self, power, spec, xp):
        """power: (m, W, F) float32 |X|^2 of m clips' frames, F = n_fft // 2 + 1 -> (m, W, H) float32."""
        raise NotImplementedError


@register_kind
class LogMel(FeatureKind):
    """log(mel + 1e-6): an HTK mel filterbank on the power spectrum, natural log."""

    name = "logmel"
    keys = {"n_mels": FeatureKey("int", 1, default=64),
            "fmin": FeatureKey("float", 0.0, default=0.0),
            "fmax": FeatureKey("float_or_null", 1e-9, default=None)}

    def num_bins(self, spec):
        return spec.n_mels

    def check(self, spec, source, at):
        nyquist = spec.sample_rate / 2
        if spec.fmin >= nyquist:
            raise ConfigError(f"{source}: fmin {spec.fmin:g} Hz is not below the Nyquist frequency "
                              f"{nyquist:g} Hz{at('fmin')}; lower fmin")
        if spec.fmax is not None and spec.fmax > nyquist:
            raise ConfigError(f"{source}: fmax {spec.fmax:g} Hz is above the Nyquist frequency {nyquist:g} Hz "
                              f"of sample_rate {spec.sample_rate}{at('fmax')}; lower fmax or use null")
        if spec.fmax_hz <= spec.fmin:
            raise ConfigError(f"{source}: fmax {spec.fmax_hz:g} Hz must be above fmin {spec.fmin:g} Hz"
                              f"{at('fmax')}")
        empty = numpy.flatnonzero(mel_filterbank(spec).max(axis=0) <= 0)
        if empty.size:
            raise ConfigError(
                f"{source}: n_mels {spec.n_mels} is too many for n_fft {spec.n_fft} between {spec.fmin:g} and "
                f"{spec.fmax_hz:g} Hz: mel band {int(empty[0])} covers no FFT bin{at('n_mels')}; "
                "lower n_mels, raise n_fft or widen fmin..fmax")

    def mel(self, power, spec, xp):
        fb = None if xp is numpy else _on_device(mel_filterbank, spec, xp)
        return _mel_project(power, spec, fb, xp)

    def from_power(self, power, spec, xp):
        return xp.log(self.mel(power, spec, xp) + xp.float32(LOG_FLOOR))


@register_kind
class Mel(LogMel):
    """The mel energies themselves (no log)."""

    name = "mel"

    def from_power(self, power, spec, xp):
        return self.mel(power, spec, xp)


@register_kind
class LogSpec(FeatureKind):
    """log(|X| + 1e-6) of every FFT bin."""

    name = "logspec"

    def num_bins(self, spec):
        return spec.n_fft // 2 + 1

    def from_power(self, power, spec, xp):
        return xp.log(xp.sqrt(power) + xp.float32(LOG_FLOOR))


@register_kind
class Spec(LogSpec):
    """The STFT magnitude |X| of every FFT bin."""

    name = "spec"

    def from_power(self, power, spec, xp):
        return xp.sqrt(power)


@register_kind
class Mfcc(LogMel):
    """The orthonormal DCT-II of the logmel column, first `n_mfcc` coefficients."""

    name = "mfcc"
    keys = {**LogMel.keys, "n_mfcc": FeatureKey("int", 1, default=20)}

    def num_bins(self, spec):
        return spec.n_mfcc

    def check(self, spec, source, at):
        super().check(spec, source, at)
        if spec.n_mfcc > spec.n_mels:
            raise ConfigError(f"{source}: n_mfcc {spec.n_mfcc} is more than n_mels {spec.n_mels}{at('n_mfcc')}; "
                              "lower n_mfcc or raise n_mels")

    def from_power(self, power, spec, xp):
        dct = None if xp is numpy else _on_device(dct_matrix, spec, xp)
        return _dct(super().from_power(power, spec, xp), spec, dct, xp)


def _convert(v, kind, lo, choices):
    if kind == "str_or_null":
        if v is None or (isinstance(v, str) and v.strip().lower() in ("null", "none", "")):
            return None
        kind = "str"
    if kind == "float_or_null":
        if v is None or (isinstance(v, str) and v.strip().lower() in ("null", "none", "nyquist", "")):
            return None
        kind = "float"
    if kind == "str":
        if not isinstance(v, str):
            raise ValueError("must be one of " + ", ".join(choices))
        if v not in choices:
            raise ValueError("must be one of " + ", ".join(choices) + did_you_mean(v, choices))
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("must be a number" if kind == "float" else "must be an integer")
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    if kind == "int":
        if v != int(v):
            raise ValueError("must be an integer")
        v = int(v)
        if v < lo:
            raise ValueError(f"must be at least {int(lo)}")
        return v
    v = float(v)
    if v < lo:
        raise ValueError("must be positive" if lo > 0 else f"must be at least {lo:g}")
    return v


@register_kind
class Pcen(LogMel):
    """Per-channel energy normalisation (Lostanlen et al. 2019) of the mel magnitudes, as librosa.pcen.

    E: the mel filterbank on the STFT magnitude |X| (not the power), (m, W, n_mels). Per band, a first-order
    low-pass over the frames, M[t] = b E[t] + (1 - b) M[t - 1] with M[-1] = 1 (librosa's initial state,
    scipy.signal.lfilter_zi), b = (sqrt(1 + 4 T^2) - 1) / (2 T^2), T = pcen_time_constant * sample_rate /
    hop frames; then bias^power * expm1(power * log1p(E * (eps + M)^-gain / bias)) (librosa's log-space form;
    log1p(E * (eps + M)^-gain) when power is 0). Each clip is filtered on its own from its first frame, so a
    frame depends on every frame before it in the clip: not frame-local. The mel magnitudes are, so windows
    of a long recording share them (`splits`) and each is normalised on its own."""

    name = "pcen"
    frame_local = False
    splits = True
    keys = {**LogMel.keys,
            "pcen_time_constant": FeatureKey("float", 1e-9, default=0.4),
            "pcen_gain": FeatureKey("float", 0.0, default=0.98),
            "pcen_bias": FeatureKey("float", 0.0, default=2.0),
            "pcen_power": FeatureKey("float", 0.0, default=0.5),
            "pcen_eps": FeatureKey("float", 1e-30, default=1e-6)}

    @staticmethod
    def smoothing(spec) -> float:
        t = spec.pcen_time_constant * spec.sample_rate / float(spec.hop)
        return float((math.sqrt(1 + 4 * t * t) - 1) / (2 * t * t))

    def from_power(self, power, spec, xp):
        return self.clip_part(self.frame_part(power, spec, xp), spec, xp)

    def frame_part(self, power, spec, xp):
        return self.mel(xp.sqrt(power), spec, xp)                     # (m, W, H) mel magnitudes

    def clip_part(self, frames, spec, xp):
        return pcen(frames, spec, xp)


def pcen(energy, spec, xp):
    """PCEN (see Pcen) of energy (m, W, H) along W -> float32.

    The smoother's state is float64 (a recursion over the frames); the gain and compression, point by point,
    in float32 with the functions NumPy vectorises (log, exp, sqrt): (eps + M)^-gain as exp(-gain log(eps +
    M)), and for the usual powers the compression in forms that do not cancel: x / (sqrt(x + bias) +
    sqrt(bias)) for power 0.5, x itself for power 1 (x = E (eps + M)^-gain). Other powers keep librosa's
    bias^power expm1(power log1p(x / bias)). As close to librosa.pcen as computing all of it in float64
    (about 1e-6 relative, set by the float32 mel magnitudes) and about twice as fast (NumPy does not
    vectorise log1p and expm1)."""
    b = Pcen.smoothing(spec)
    f32 = xp.float32
    e = xp.asarray(energy, dtype=f32)
    # One step per frame over every clip and band at once (W is a few hundred), the state in float64:
    # scipy.signal.lfilter's recursion with librosa's initial state (lfilter_zi: M[-1] = 1), without
    # importing scipy.signal (0.7 s and 48 MB) and faster on these shapes.
    smooth = xp.empty_like(e)
    prev = xp.ones(e.shape[:1] + e.shape[2:], dtype=xp.float64)
    for t in range(e.shape[1]):
        prev *= 1.0 - b
        prev += b * e[:, t]
        smooth[:, t] = prev
    eps, gain, bias, power = spec.pcen_eps, spec.pcen_gain, spec.pcen_bias, spec.pcen_power
    smooth += f32(eps)
    agc = xp.log(smooth, out=smooth)
    agc *= f32(-gain)
    agc = xp.exp(agc, out=agc)                                          # (eps + M)^-gain
    x = e * agc
    if power == 0:
        return xp.log1p(x)
    if bias == 0:
        return xp.exp(f32(power) * xp.log(x))
    if power == 1:
        return x
    if power == 0.5:
        return x / (xp.sqrt(x + f32(bias)) + f32(math.sqrt(bias)))
    return (f32(bias ** power) * xp.expm1(f32(power) * xp.log1p(x / f32(bias)))).astype(f32)


# ---- constant tables (host, built once per spec; small) -------------------------------------------

def hz_to_mel(f):
    """HTK mel scale."""
    return 2595.0 * numpy.log10(1.0 + numpy.asarray(f, dtype=numpy.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (numpy.asarray(m, dtype=numpy.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def _window(name: str, n: int):
    k = numpy.arange(n, dtype=numpy.float64) * (2 * numpy.pi / n)  # periodic: denominator n, not n - 1
    if name == "hann":
        w = 0.5 - 0.5 * numpy.cos(k)
    elif name == "hamming":
        w = 0.54 - 0.46 * numpy.cos(k)
    elif name == "blackman":
        w = 0.42 - 0.5 * numpy.cos(k) + 0.08 * numpy.cos(2 * k)
    else:
        raise ValueError(name)
    return w.astype(numpy.float32)


def window(spec: FeatureSpec):
    """(n_fft,) float32 host array."""
    return _window(spec.window, spec.n_fft)


@functools.lru_cache(maxsize=32)
def _mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax):
    n_freqs = n_fft // 2 + 1
    freqs = numpy.arange(n_freqs, dtype=numpy.float64) * (sample_rate / n_fft)
    edges = mel_to_hz(numpy.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (center - lower)
    falling = (upper - freqs[:, None]) / (upper - center)
    fb = numpy.maximum(0.0, numpy.minimum(rising, falling))
    return fb.astype(numpy.float32)


def mel_filterbank(spec: FeatureSpec):
    """(n_fft//2 + 1, n_mels) float32 host array: power spectrum row-vector @ this = mel energies."""
    return _mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, float(spec.fmin), spec.fmax_hz)


@functools.lru_cache(maxsize=32)
def _dct_matrix(n_in: int, n_out: int):
    n = numpy.arange(n_in, dtype=numpy.float64)
    k = numpy.arange(n_out, dtype=numpy.float64)
    m = numpy.cos(numpy.pi / n_in * (n[:, None] + 0.5) * k[None, :]) * numpy.sqrt(2.0 / n_in)
    m[:, 0] *= numpy.sqrt(0.5)
    return m.astype(numpy.float32)


def dct_matrix(spec: FeatureSpec):
    """(n_mels, n_mfcc) float32 host array: orthonormal DCT-II, logmel row-vector @ this = mfcc."""
    return _dct_matrix(spec.n_mels, spec.n_mfcc)


@functools.lru_cache(maxsize=32)
def _mel_bands(sample_rate, n_fft, n_mels, fmin, fmax):
    """[(first bin, last bin + 1, weights)] of each triangle: the filterbank without its zeros."""
    fb = _mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    bands = []
    for b in range(n_mels):
        nz = numpy.flatnonzero(fb[:, b])
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
        bands.append((lo, hi, numpy.ascontiguousarray(fb[lo:hi, b])))
    return bands


# ---- compute -------------------------------------------------------------------------------------

def _mel_project(power, spec, fb, xp):
    """(m, W, F) power -> (m, W, n_mels).

    On the GPU a dense matmul. On the host each triangle is summed over its own few bins with einsum
    (~2 F multiply-adds per frame instead of F * n_mels): as fast as single-threaded BLAS, immune to BLAS
    thread oversubscription on a busy machine, and a clip's result never depends on the other clips of its
    chunk (BLAS blocking would make it so).
    """
    if fb is not None:
        return power @ fb
    bands = _mel_bands(spec.sample_rate, spec.n_fft, spec.n_mels, float(spec.fmin), spec.fmax_hz)
    out = numpy.empty(power.shape[:-1] + (len(bands),), dtype=numpy.float32)
    for b, (lo, hi, w) in enumerate(bands):
        out[..., b] = numpy.einsum("mwf,f->mw", power[..., lo:hi], w)
    return out


def _dct(logmel, spec, dct, xp):
    """(m, W, n_mels) -> (m, W, n_mfcc): orthonormal DCT-II (scipy.fft on the host, a matmul on the GPU)."""
    if dct is not None:
        return logmel @ dct
    import scipy.fft

    return scipy.fft.dct(logmel, type=2, norm="ortho", axis=-1)[..., :spec.n_mfcc].astype(numpy.float32)



_DEVICE_TABLES: dict = {}


def _on_device(make, spec: FeatureSpec, xp):
    """make(spec) (a host table: window, mel filterbank, DCT matrix) copied to the current device once and
    kept there, per (table, spec, device)."""
    key = (make.__name__, spec, xp.__name__, xp.cuda.Device().id)
    table = _DEVICE_TABLES.get(key)
    if table is None:
        table = _DEVICE_TABLES[key] = xp.asarray(make(spec))
    return table


def _rfft(xp):
    """The fastest real FFT for the array module: scipy.fft on the host (numpy.fft is ~5x slower on float32)."""
    if xp is numpy:
        import scipy.fft

        return scipy.fft.rfft
    return xp.fft.rfft


def compute_features(signals, spec: FeatureSpec, xp, frames_only: bool = False):
    """signals: (n, samples) float32 on xp -> (n, 1, H, W) float32 on xp. See the module docstring.

    `samples` may differ from spec.num_samples (W follows it) but must be at least n_fft. frames_only: the
    kind's frame-local part only (FeatureKind.frame_part; for ingest/windows.py's shared frames).
    """
    signals = xp.ascontiguousarray(xp.asarray(signals, dtype=xp.float32))
    if signals.ndim == 1:
        signals = signals[None, :]
    n, samples = signals.shape
    if samples < spec.n_fft:
        raise ValueError(f"signals of {samples} samples are shorter than n_fft {spec.n_fft}")
    n_frames = 1 + (samples - spec.n_fft) // spec.hop
    h = spec.num_bins
    out = xp.empty((n, 1, h, n_frames), dtype=xp.float32)
    if n == 0:
        return out
    on_host = xp is numpy
    win = window(spec) if on_host else _on_device(window, spec, xp)
    kind = spec.feature_kind
    rfft = _rfft(xp)
    step = max(1, (_FRAME_BYTES if on_host else _GPU_FRAME_BYTES) // (n_frames * spec.n_fft * 4))
    item = signals.itemsize
    for a in range(0, n, step):
        chunk = signals[a:a + step]
        m = chunk.shape[0]
        # (m, W, n_fft) view of overlapping frames; the window product makes the one copy.
        frames = xp.lib.stride_tricks.as_strided(
            chunk, shape=(m, n_frames, spec.n_fft), strides=(samples * item, spec.hop * item, item))
        spectrum = rfft(frames * win, axis=-1)                        # (m, W, F) complex64
        power = spectrum.real ** 2
        power += spectrum.imag ** 2
        del spectrum
        feat = (kind.frame_part if frames_only else kind.from_power)(power, spec, xp)   # (m, W, H)
        out[a:a + m, 0] = feat.transpose(0, 2, 1)                     # (m, H, W): frequency on rows
    return out
