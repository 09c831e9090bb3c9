"""Audio files -> fixed-length mono float32 clips at the feature sample rate (host only, NumPy).

Steps, each its own function so the batch maker can time them: `read_audio` (decode with soundfile: every
format its libsndfile reads, `FORMAT_EXTENSIONS`; multichannel mixed to mono by averaging, or one channel
taken: `--channel`), `resample`
(scipy.signal.resample_poly by the reduced ratio of the rates), `fit_length` (center-crop when longer,
zero-pad at the end when shorter). Every failure is a DataError naming the file and the reason, so callers
can skip the file and list it.
"""
from __future__ import annotations

import functools
import math
import os
import re
import stat

import numpy as np

from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import special_mode

# The file extensions of each format soundfile (libsndfile) decodes (soundfile.available_formats(); tests check
# that none is missing). Left out: RAW (no header, so any file would "decode" to noise), MAT4/MAT5 and HTK
# (data files that seldom hold sound). MP3 needs libsndfile 1.1 or later, Opus (in Ogg) 1.0.29 or later.
FORMAT_EXTENSIONS = {
    "WAV": (".wav",), "WAVEX": (".wav",), "FLAC": (".flac",), "OGG": (".ogg", ".oga", ".opus"),
    "AIFF": (".aiff", ".aif", ".aifc"), "MP3": (".mp3", ".mp2"), "CAF": (".caf",), "W64": (".w64",),
    "RF64": (".rf64",), "AU": (".au", ".snd"), "NIST": (".nist", ".sph"), "IRCAM": (".sf", ".ircam"),
    "VOC": (".voc",), "PAF": (".paf",), "SVX": (".8svx", ".svx"), "AVR": (".avr",), "SD2": (".sd2",),
    "SDS": (".sds",), "PVF": (".pvf",), "XI": (".xi",), "WVE": (".wve",), "MPC2K": (".mpc2k",),
}
# Audio soundfile cannot decode: listed among the skipped files with what to do, not passed over in silence.
UNDECODABLE_EXTENSIONS = (".m4a", ".m4b", ".mp4", ".aac", ".wma", ".amr", ".ape", ".wv", ".ac3", ".mka")
AUDIO_EXTENSIONS = tuple(dict.fromkeys((".wav", ".flac", ".ogg", ".aiff", ".aif")
                                       + sum(FORMAT_EXTENSIONS.values(), ()) + UNDECODABLE_EXTENSIONS))
AUDIO_KINDS = "wav, flac, ogg, mp3, aiff or another format soundfile reads"   # for messages
# Beyond these a file is refused (skipped with the reason): above 1.536 MHz no microphone or hydrophone records
# (ultrasound recorders stop at 1 MHz), and resampling such a claim would need hundreds of GiB; float samples
# far beyond ±1 make features overflow to inf.
MAX_SAMPLE_RATE = 1_536_000
MAX_AMPLITUDE = 1e6

# libsndfile's header log: "data : 16000 (should be 7978)" when the file ends before its data chunk does.
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


CHANNEL_MIX, CHANNEL_ALL = "mix", "all"
MAX_TIME_EXPANSION = 1000.0


class AudioError(DataError):
    """An audio file that cannot be used; `reason` is the message without the path."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class ChannelError(ConfigError):
    """--channel N for a file with fewer channels: a one-line error (exit 2), not a file to skip."""


def parse_channel(value, flag: str = "--channel"):
    """--channel's value: 'mix' (the default: every channel averaged), 'all' (each channel its own stream) or
    a channel number N >= 1 (int). ConfigError for anything else."""
    if value is None:
        return CHANNEL_MIX
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        text = str(value).strip().lower()
    if text in (CHANNEL_MIX, CHANNEL_ALL):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(f"{flag} {value}: give a channel number (1 for the first), all (each channel on its own) or "
                      "mix (the channels averaged, the default)")


def check_time_expansion(value, flag: str = "--time-expansion") -> float:
    """--time-expansion's factor F (the recording was stored slowed down F times) as a float; ConfigError
    unless 0 < F <= MAX_TIME_EXPANSION."""
    f = 1.0 if value is None else float(value)
    if not (math.isfinite(f) and 0 < f <= MAX_TIME_EXPANSION):
        raise ConfigError(f"{flag} {value}: give the factor the recorder slowed the sound down by (e.g. 10; 1 for a "
                          f"real-time recording), above 0 and at most {MAX_TIME_EXPANSION:g}")
    return f


def true_rate(header_rate: int, time_expansion: float = 1.0) -> int:
    """The rate the sound was recorded at: the header's times the time-expansion factor, in whole Hz."""
    return int(round(int(header_rate) * float(time_expansion)))


def check_channel(path: str, channel, channels: int):
    """ChannelError when the 1-based `channel` (an int; None, 'mix' and 'all' always fit) is not one of the
    file's `channels`."""
    if isinstance(channel, int) and not 1 <= channel <= int(channels):
        raise ChannelError(f"{path}: --channel {channel}, but the file has {int(channels)} channel"
                           f"{'s' if channels != 1 else ''}; give 1 to {int(channels)}, all or mix")


def channel_streams(path: str, channel, channels: int) -> list:
    """The streams a file of `channels` channels makes under --channel `channel`: [None] (mix: the channels
    averaged), [N] (one channel, 1-based; ChannelError past the last) or [1, ..., channels] (all)."""
    if channel in (None, CHANNEL_MIX):
        return [None]
    if channel == CHANNEL_ALL:
        return list(range(1, int(channels) + 1))
    check_channel(path, channel, channels)
    return [int(channel)]


def take_channel(data, channel):
    """(n,) float32 of `data` (n, C): channel `channel` (1-based), or the mean of the channels (None)."""
    if isinstance(channel, int) and not isinstance(channel, bool):
        return data[:, channel - 1]
    return data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)


def stream_name(name: str, channel) -> str:
    """A recording's or clip's name for one channel of it: '<name>#ch<k>' (channel None: the name)."""
    return name if channel is None else f"{name}#ch{int(channel)}"


_STREAM = re.compile(r"^(.*)#ch([1-9][0-9]*)$", re.DOTALL)


def split_stream_name(name: str) -> tuple:
    """(name, channel) of a stream_name ('<name>#ch<k>' -> (name, k)); (name, None) for any other name."""
    m = _STREAM.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


def is_audio_name(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS) and not os.path.basename(name).startswith(".")


@functools.lru_cache(maxsize=1)
def _available_formats() -> frozenset:
    import soundfile as sf

    return frozenset(sf.available_formats())


def _undecodable(path: str):
    """The reason soundfile cannot decode `path`, by its extension, or None."""
    ext = os.path.splitext(path)[1].lower()
    if ext in UNDECODABLE_EXTENSIONS:
        return (f"soundfile (libsndfile) does not decode {ext} files; convert it to flac or wav "
                f"(e.g. ffmpeg -i IN{ext} OUT.flac)")
    formats = [f for f, exts in FORMAT_EXTENSIONS.items() if ext in exts]
    if formats and not any(f in _available_formats() for f in formats):
        import soundfile as sf

        return (f"this soundfile's libsndfile ({sf.__libsndfile_version__}) does not decode {ext} files; "
                "upgrade it (pip install -U soundfile) or convert the file to flac or wav")
    return None


def check_audio_file(path: str):
    """AudioError unless `path` is a non-empty regular file (links followed) of a format soundfile decodes.
    Asked before anything opens it: opening a FIFO blocks until a writer comes, a device reads without end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError(path, "cannot read: not found") from None
    except OSError as exc:
        raise AudioError(path, f"cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, "is a folder, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(path, f"is {special_mode(st.st_mode) or 'something'}, not a regular file")
    if st.st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    reason = _undecodable(path)
    if reason:
        raise AudioError(path, reason)


def truncation_reason(log: str):
    """A reason string when libsndfile's log shows a file cut short, else None."""
    for m in _SHORT_CHUNK.finditer(log or ""):
        declared, present = int(m.group(2)), int(m.group(3))
        if declared > present:
            return f"truncated: the header promises {declared} bytes of audio, the file holds {present}"
    if "> file length" in (log or "") or "ended unexpectedly" in (log or ""):
        return "truncated: the file ends before its audio data does"
    return None


def read_audio(path: str, crop_to=None, channel=None, time_expansion: float = 1.0):
    """Decode `path` -> ((samples,) float32 mono, sample rate). AudioError (a DataError) on any failure.

    crop_to=(rate, n): when the file is already at `rate` and longer than n samples, only its center n
    samples are decoded (the same samples `fit_length` would keep; saves decoding long recordings).
    channel: None (or 'mix') averages the channels; N (1-based) takes channel N (ChannelError, a ConfigError,
    when the file has fewer). time_expansion F: the file was stored slowed down F times, so the rate returned
    is the header's times F.
    """
    import soundfile as sf

    check_audio_file(path)
    channel = None if channel == CHANNEL_MIX else channel
    try:
        with sf.SoundFile(path) as f:
            sr = true_rate(f.samplerate, time_expansion)
            if not 0 < int(f.samplerate) <= MAX_SAMPLE_RATE:   # before reading: a header can claim any rate
                raise AudioError(path, f"sample rate {int(f.samplerate)} Hz in the header is not a real recording's "
                                       f"(expected 1 to {MAX_SAMPLE_RATE:,} Hz); the header is damaged")
            if not 0 < sr <= MAX_SAMPLE_RATE:
                raise AudioError(path, f"--time-expansion {time_expansion:g} makes the rate {sr:,} Hz, beyond the "
                                       f"{MAX_SAMPLE_RATE:,} Hz any recorder reaches; check the factor")
            check_channel(path, channel, f.channels)
            frames = -1
            if crop_to is not None and sr == int(crop_to[0]) and f.seekable() and f.frames > int(crop_to[1]):
                frames = int(crop_to[1])
                f.seek((f.frames - frames) // 2)
            data = f.read(frames, dtype="float32", always_2d=True)
            log = f.extra_info
    except (RuntimeError, sf.SoundFileError) as exc:  # LibsndfileError is a RuntimeError
        msg = str(exc).replace(f"Error opening {path!r}: ", "").strip().rstrip(".")
        msg = re.sub(r"^Error\s*:\s*", "", msg)
        if "Format not recognised" in msg:
            msg = "not an audio file soundfile can read (format not recognised)"
        raise AudioError(path, f"cannot decode: {msg}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise AudioError(path, f"cannot decode: {exc}") from None
    reason = truncation_reason(log)
    if reason:
        raise AudioError(path, reason)
    if data.shape[0] == 0:
        raise AudioError(path, "zero-length clip (no samples)")
    if sr <= 0:
        raise AudioError(path, f"invalid sample rate {sr}")
    mono = take_channel(data, channel)
    if not np.isfinite(mono).all():
        raise AudioError(path, "holds NaN or infinite samples")
    peak = float(np.abs(mono).max())
    if peak > MAX_AMPLITUDE:
        raise AudioError(path, f"samples reach {peak:.3g}; audio samples lie within ±1 (float files) and this file's "
                               f"exceed ±{MAX_AMPLITUDE:g}: damaged, or not audio")
    return np.ascontiguousarray(mono, dtype=np.float32), sr


def resample(x, sr_in: int, sr_out: int):
    """(samples,) float32 at sr_in -> float32 at sr_out (polyphase, Kaiser-windowed FIR of resample_poly)."""
    if sr_in == sr_out:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32, copy=False)


def fit_length(x, n: int):
    """Center-crop to n samples, or zero-pad at the end."""
    if x.shape[0] == n:
        return x
    if x.shape[0] > n:
        start = (x.shape[0] - n) // 2
        return x[start:start + n]
    out = np.zeros(n, dtype=np.float32)
    out[:x.shape[0]] = x
    return out


def load_clip(path: str, spec, channel=None, time_expansion: float = 1.0):
    """Decode, mix to mono (or take `channel`), resample to spec.sample_rate, crop/pad to spec.num_samples ->
    (samples,) float32."""
    x, sr = read_audio(path, crop_to=(spec.sample_rate, spec.num_samples), channel=channel,
                       time_expansion=time_expansion)
    return fit_length(resample(x, sr, spec.sample_rate), spec.num_samples)
