"""make-batches `--noise-dir`, `--noise-snr`, `--copies`, `--gain` (docs/COMMANDS.md): noisy copies of the training clips.

Each training clip is written once as it is and `copies` more times, each copy mixed on the waveform (after
resampling and cropping, before the features) with a random stretch of a random recording of the noise
folder at a random SNR in [lo, hi] dB, and with `--gain` scaled by a random gain in [lo, hi] dB. The SNR is
the clip's mean power over the noise stretch's; a silent clip gets the noise at the SNR relative to -40 dBFS.
A noise recording shorter than the clip is looped. The test range is never augmented.

--gain and --noise-snr lie within ±DB_LIMIT (60) dB: 60 dB scales the samples 1000 times (or by 1/1000),
beyond what augmentation needs, and far beyond it the copies' features overflow (float32 power spectra end
near +380 dB) or the noise vanishes below float32's precision. Every noise file is checked when the options
are (a FIFO, a device, an unreadable or truncated file is refused, naming it): header, and the last samples
read, which a file cut short does not have.

Every draw comes from a generator seeded by (seed, case index, copy), never from a running stream, so the
same command writes the same batches whatever --jobs is and however the clips fall into worker tasks.
Noise files are opened, not decoded whole: only the stretch a copy needs is read (seek + read).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from convnet_cli.errors import ConfigError, DataError
from convnet_cli.ingest.audio import AUDIO_KINDS, AudioError, check_audio_file, resample, truncation_reason

SILENT_POWER = 1e-4   # -40 dBFS: the reference power of an all-zero clip
DEFAULT_SNR = (0.0, 20.0)
DB_LIMIT = 60.0       # |dB| of --gain and --noise-snr (module docstring)
_TAIL = 4096          # samples read at the end of each noise file when it is checked
_EXAMPLE = {"--gain": "-6,6", "--noise-snr": "0,20"}
_MEANS = {"--gain": f"{DB_LIMIT:g} dB scales the samples {10 ** (DB_LIMIT / 20):g} times",
          "--noise-snr": f"at -{DB_LIMIT:g} dB the noise is {10 ** (DB_LIMIT / 20):g} times the clip's amplitude"}


@dataclass(frozen=True)
class NoiseOptions:
    """What the workers need to make the copies (picklable)."""

    files: tuple = ()                 # absolute paths of the noise recordings (empty: gain-only copies)
    frames: tuple = ()                # their lengths in samples, at their own rates
    rates: tuple = ()
    snr: tuple = DEFAULT_SNR          # dB
    gain: tuple | None = None         # dB, or None
    copies: int = 1
    seed: int = 0
    noise_dir: str = ""

    def describe(self) -> str:
        parts = [f"{self.copies} cop{'y' if self.copies == 1 else 'ies'} per training clip"]
        if self.files:
            parts.append(f"noise from {len(self.files)} recording{'s' if len(self.files) != 1 else ''} in "
                         f"{self.noise_dir} at {self.snr[0]:g} to {self.snr[1]:g} dB SNR")
        if self.gain is not None:
            parts.append(f"gain {self.gain[0]:g} to {self.gain[1]:g} dB")
        return ", ".join(parts)

    def meta(self) -> dict:
        """What batches.meta records of the copies (key `copies`)."""
        return {"copies": self.copies, "noise_dir": self.noise_dir or None,
                "noise_snr": list(self.snr) if self.files else None,
                "gain": list(self.gain) if self.gain is not None else None, "seed": self.seed}


def parse_db_range(text, flag: str) -> tuple:
    """'0,20' -> (0.0, 20.0); '6' -> (6.0, 6.0). ConfigError naming the flag otherwise."""
    if isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    example = f"{flag} {_EXAMPLE.get(flag, '0,20')}"
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals) or vals[0] > vals[1]:
        raise ConfigError(f"{flag} {text!r}: expected LO,HI in dB with LO <= HI, e.g. {example}")
    if max(abs(v) for v in vals) > DB_LIMIT:
        means = f" ({_MEANS[flag]})" if flag in _MEANS else ""
        raise ConfigError(f"{flag} {text!r}: each bound must lie within ±{DB_LIMIT:g} dB{means}; e.g. {example}")
    return (vals[0], vals[1])


def noise_options(noise_dir=None, snr=None, copies=None, gain=None, seed=0) -> NoiseOptions | None:
    """The checked options of the four flags, or None when none of them asks for copies."""
    if noise_dir is None and gain is None:
        for flag, v in (("--noise-snr", snr), ("--copies", copies)):
            if v is not None:
                raise ConfigError(f"{flag} applies to the noisy copies of --noise-dir DIR (or --gain LO,HI); "
                                  "give --noise-dir too, or drop it")
        return None
    copies = 1 if copies is None else int(copies)
    if copies < 1:
        raise ConfigError(f"--copies {copies}: must be at least 1 (the noisy copies per training clip)")
    if snr is not None and noise_dir is None:
        raise ConfigError("--noise-snr applies to --noise-dir DIR; give --noise-dir too, or drop it")
    files, frames, rates = (), (), ()
    if noise_dir is not None:
        files, frames, rates = _noise_files(noise_dir)
    return NoiseOptions(files=files, frames=frames, rates=rates,
                        snr=parse_db_range(snr, "--noise-snr") if snr is not None else DEFAULT_SNR,
                        gain=parse_db_range(gain, "--gain") if gain is not None else None,
                        copies=copies, seed=int(seed), noise_dir=str(noise_dir or ""))


def _noise_files(noise_dir):
    from convnet_cli.ingest.sources import find_audio

    if not os.path.isdir(noise_dir):
        raise ConfigError(f"--noise-dir {noise_dir}: no such folder; give a folder of noise recordings")
    names = find_audio(noise_dir)
    if not names:
        raise ConfigError(f"--noise-dir {noise_dir}: holds no audio files ({AUDIO_KINDS}); put noise recordings "
                          "there")
    files, frames, rates = [], [], []
    for name in names:
        path = os.path.abspath(os.path.join(noise_dir, name))
        n, rate = _check_noise(path)
        files.append(path)
        frames.append(n)
        rates.append(rate)
    return tuple(files), tuple(frames), tuple(rates)


def _check_noise(path):
    """(frames, sample rate) of a usable noise file; ConfigError naming it otherwise."""
    import soundfile as sf

    def refuse(reason):
        return ConfigError(f"--noise-dir: {path}: {reason}; remove it from the noise folder or fix it")

    try:
        check_audio_file(path)   # never opens a FIFO or a device
    except AudioError as exc:
        raise refuse(exc.reason) from None
    try:
        with sf.SoundFile(path) as f:
            n, rate, log = int(f.frames), int(f.samplerate), f.extra_info
            reason = truncation_reason(log)
            if not reason and n > 0 and rate > 0:
                if not f.seekable():
                    raise refuse("soundfile cannot seek in it (each copy reads a random stretch)")
                want = min(n, _TAIL)
                f.seek(n - want)
                got = f.read(want, dtype="float32", always_2d=True).shape[0]
                if got < want:
                    reason = f"truncated: its last {want - got} of {n} samples are missing"
    except (RuntimeError, sf.SoundFileError, OSError, ValueError, TypeError) as exc:
        raise refuse(f"cannot be read as audio to its end ({str(exc).strip().rstrip('.') or type(exc).__name__}): "
                     "truncated or damaged") from None
    if reason:
        raise refuse(reason)
    if n <= 0 or rate <= 0:
        raise refuse("holds no samples")
    return n, rate


class NoiseReadError(DataError):
    """A noise file that went bad after it was checked (read part way)."""


def copy_rng(seed: int, case: int, copy: int):
    """The generator of one copy's draws."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x6E6F6973, int(case), int(copy)])


def read_stretch(path: str, frames: int, rate: int, n: int, sr: int, rng) -> np.ndarray:
    """n samples at rate sr of the recording at `path` (frames long, at `rate`), from a random start;
    a recording shorter than that is looped."""
    import soundfile as sf

    need = int(math.ceil(n * rate / sr)) + 1
    start = int(rng.integers(0, max(frames - need, 0) + 1))
    try:
        with sf.SoundFile(path) as f:
            f.seek(start)
            data = f.read(min(need, frames - start), dtype="float32", always_2d=True)
    except (RuntimeError, sf.SoundFileError, OSError, ValueError, TypeError) as exc:
        why = str(exc).strip().rstrip(".")
        raise NoiseReadError(f"--noise-dir: {path}: cannot be read at sample {start} ({why}); remove it from the "
                             "noise folder or fix it") from None
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    x = resample(np.ascontiguousarray(x), rate, sr)
    if x.shape[0] < n:
        x = np.tile(x, -(-n // max(x.shape[0], 1)))
    return np.nan_to_num(x[:n].astype(np.float32, copy=False))


def mix(clip: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """clip + noise scaled so that 10 log10(P_clip / P_noise) = snr_db (float32)."""
    p_clip = float(np.mean(np.square(clip, dtype=np.float64)))
    p_noise = float(np.mean(np.square(noise, dtype=np.float64)))
    if p_noise <= 0:
        return clip
    ref = p_clip if p_clip > 0 else SILENT_POWER
    scale = math.sqrt(ref / (p_noise * 10 ** (snr_db / 10)))
    return (clip + np.float32(scale) * noise).astype(np.float32, copy=False)


def make_copy(clip: np.ndarray, sr: int, opts: NoiseOptions, case: int, copy: int) -> np.ndarray:
    """Copy number `copy` (1-based) of case `case`: noise at a random SNR, then a random gain."""
    rng = copy_rng(opts.seed, case, copy)
    out = clip
    if opts.files:
        k = int(rng.integers(len(opts.files)))
        noise = read_stretch(opts.files[k], opts.frames[k], opts.rates[k], clip.shape[0], sr, rng)
        out = mix(out, noise, float(rng.uniform(*opts.snr)))
    if opts.gain is not None:
        out = (out * np.float32(10 ** (float(rng.uniform(*opts.gain)) / 20))).astype(np.float32, copy=False)
    return out


def copy_name(name: str, copy: int) -> str:
    """The filename a copy is stored under in the batch files: the clip's, marked with the copy number."""
    return f"{name}#copy{copy}"


def window_copies(recs, plan, cases, spec, hop_s: float, opts: NoiseOptions, out_path: str, group: int = 64):
    """make-batches --annotations: the noisy copies of the training windows `cases` (indices into the
    WindowPlan `plan` of ingest/recordings.py), as feature rows (num_vis float32 each) appended to out_path.

    Each window's samples are read from its recording (only those samples, resampled), copied as
    make_copy does for a clip, and featurized in groups of `group`. Returns ([(case, copy)] in row order,
    {recording index: reason} for recordings that could not be read here)."""
    from convnet_cli.ingest.audio import AudioError
    from convnet_cli.ingest.features import compute_features
    from convnet_cli.ingest.windows import RecordingReader

    n = spec.num_samples
    order, bad = [], {}
    cases = np.asarray(cases, dtype=np.int64)
    with open(out_path, "wb") as f:
        pending, keys = [], []

        def flush():
            if pending:
                feats = compute_features(np.stack(pending), spec, np)
                f.write(np.ascontiguousarray(feats.reshape(len(pending), -1), dtype=np.float32).tobytes())
                order.extend(keys)
                pending.clear()
                keys.clear()

        for ri in np.unique(plan.rec[cases]).tolist():
            mine = cases[plan.rec[cases] == ri]
            mine = mine[np.argsort(plan.win[mine], kind="stable")]
            try:
                reader = RecordingReader(recs[ri].path, spec.sample_rate, recs[ri].channel, recs[ri].time_expansion)
            except AudioError as exc:
                bad[ri] = exc.reason
                continue
            try:
                for case in mine.tolist():
                    o0 = int(round(int(plan.win[case]) * hop_s * spec.sample_rate))
                    clip = reader.read(o0, o0 + n)
                    for copy in range(1, opts.copies + 1):
                        pending.append(make_copy(clip, spec.sample_rate, opts, case, copy))
                        keys.append((case, copy))
                        if len(pending) >= group:
                            flush()
            except AudioError as exc:
                bad[ri] = exc.reason
            finally:
                reader.close()
        flush()
    return order, bad
