"""make-batches `--noise-dir`, `--noise-snr`, `--copies`, `--gain` (README): noisy copies of the training clips.

Each training clip is written once as it is and `copies` more times, each copy mixed on the waveform (after
resampling and cropping, before the features) with a random stretch of a random recording of the noise
folder at a random SNR in [lo, hi] dB, and with `--gain` scaled by a random gain in [lo, hi] dB. The SNR is
the clip's mean power over the noise stretch's; a silent clip gets the noise at the SNR relative to -40 dBFS.
A noise recording shorter than the clip is looped. The test range is never augmented.

Every draw comes from a generator seeded by (seed, case index, copy), never from a running stream, so the
same command writes the same batches whatever --jobs is and however the clips fall into worker tasks.
Noise files are opened, not decoded whole: only the stretch a copy needs is read (seek + read).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from convnet_cli.errors import ConfigError
from convnet_cli.ingest.audio import resample

SILENT_POWER = 1e-4   # -40 dBFS: the reference power of an all-zero clip
DEFAULT_SNR = (0.0, 20.0)


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
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals) or vals[0] > vals[1]:
        raise ConfigError(f"{flag} {text!r}: expected LO,HI in dB with LO <= HI, e.g. {flag} 0,20")
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
    import soundfile as sf

    from convnet_cli.ingest.sources import find_audio

    if not os.path.isdir(noise_dir):
        raise ConfigError(f"--noise-dir {noise_dir}: no such folder; give a folder of noise recordings")
    names = find_audio(noise_dir)
    if not names:
        raise ConfigError(f"--noise-dir {noise_dir}: holds no audio files (.wav, .flac, .ogg, .aiff); "
                          "put noise recordings there")
    files, frames, rates = [], [], []
    for name in names:
        path = os.path.abspath(os.path.join(noise_dir, name))
        try:
            info = sf.info(path)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ConfigError(f"--noise-dir: {path}: cannot be read as audio ({exc}); remove it or fix it") from None
        if info.frames <= 0 or info.samplerate <= 0:
            raise ConfigError(f"--noise-dir: {path}: holds no samples; remove it")
        files.append(path)
        frames.append(int(info.frames))
        rates.append(int(info.samplerate))
    return tuple(files), tuple(frames), tuple(rates)


def copy_rng(seed: int, case: int, copy: int):
    """The generator of one copy's draws."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x6E6F6973, int(case), int(copy)])


def read_stretch(path: str, frames: int, rate: int, n: int, sr: int, rng) -> np.ndarray:
    """n samples at rate sr of the recording at `path` (frames long, at `rate`), from a random start;
    a recording shorter than that is looped."""
    import soundfile as sf

    need = int(math.ceil(n * rate / sr)) + 1
    start = int(rng.integers(0, max(frames - need, 0) + 1))
    with sf.SoundFile(path) as f:
        f.seek(start)
        data = f.read(min(need, frames - start), dtype="float32", always_2d=True)
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
    from convnet_cli.ingest.windows import _Reader

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
                reader = _Reader(recs[ri].path, spec.sample_rate)
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
