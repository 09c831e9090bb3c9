"""Decoding, mono mix-down, resampling, crop/pad, and every kind of unreadable audio file."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from convnet_cli.errors import DataError
from convnet_cli.ingest.audio import AudioError, fit_length, load_clip, read_audio
from convnet_cli.ingest.features import FeatureSpec
from tests.audio_fixtures import tone, write_bad_files, write_clip


def peak_hz(x, sr):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * sr / len(x)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "aiff", "aif"])
def test_formats_decode(tmp_path, fmt):
    rng = np.random.default_rng(0)
    x = tone(1000, 8000, 0.5, rng, noise=0.0)
    p = write_clip(str(tmp_path / f"a.{fmt}"), x, 8000)
    y, sr = read_audio(p)
    assert sr == 8000 and y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 4000) <= (0 if fmt != "ogg" else 64)
    assert abs(peak_hz(y, sr) - 1000) < 10
    if fmt != "ogg":  # lossless: the samples themselves come back (16-bit)
        np.testing.assert_allclose(y, x, atol=1.0 / 32768 + 1e-6)


def test_stereo_is_mixed_to_mono(tmp_path):
    left = np.linspace(-0.5, 0.5, 800, dtype=np.float32)
    right = np.full(800, 0.25, dtype=np.float32)
    p = str(tmp_path / "s.wav")
    sf.write(p, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    y, _ = read_audio(p)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)


def test_resample_keeps_pitch_and_length(tmp_path):
    p = str(tmp_path / "r.wav")
    write_clip(p, tone(1500, 44100, 1.0, np.random.default_rng(0), noise=0.0), 44100)
    spec = FeatureSpec(sample_rate=16000, duration=1.0)
    y = load_clip(p, spec)
    assert y.shape == (16000,) and y.dtype == np.float32
    assert abs(peak_hz(y, 16000) - 1500) < 3
    assert 0.3 < np.abs(y[100:-100]).max() < 0.6   # amplitude 0.5 kept (no gain change)


def test_center_crop_and_zero_pad(tmp_path):
    ramp = (np.arange(10000) / 10000.0 - 0.5).astype(np.float32)
    p = str(tmp_path / "ramp.wav")
    sf.write(p, ramp, 8000, subtype="FLOAT")
    y = load_clip(p, FeatureSpec(sample_rate=8000, duration=0.5, n_fft=256))       # 4000 of 10000: center
    np.testing.assert_array_equal(y, ramp[3000:7000])
    full, _ = read_audio(p)
    np.testing.assert_array_equal(fit_length(full, 4000), y)                        # same as decoding all
    y = load_clip(p, FeatureSpec(sample_rate=8000, duration=2.0, n_fft=256))       # 16000: padded at the end
    np.testing.assert_array_equal(y[:10000], ramp)
    assert not y[10000:].any()


def test_bad_files_raise_data_error_naming_file_and_reason(tmp_path):
    bad = write_bad_files(str(tmp_path))
    spec = FeatureSpec(sample_rate=8000, duration=0.5, n_fft=256)
    for name, words in bad.items():
        path = str(tmp_path / name)
        with pytest.raises(DataError) as e:
            load_clip(path, spec)
        assert isinstance(e.value, AudioError)
        assert str(e.value).startswith(path + ": ")
        assert words in e.value.reason.lower(), (name, e.value.reason)


def test_nan_samples_and_missing_file(tmp_path):
    p = str(tmp_path / "nan.wav")
    x = np.zeros(800, np.float32)
    x[10] = np.nan
    sf.write(p, x, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        read_audio(p)
    with pytest.raises(AudioError, match="cannot read"):
        read_audio(str(tmp_path / "nope.wav"))


def test_every_format_soundfile_decodes_has_its_extensions():
    from convnet_cli.ingest.audio import AUDIO_EXTENSIONS, FORMAT_EXTENSIONS, is_audio_name

    left_out = {"RAW", "MAT4", "MAT5", "HTK"}          # no header / data files (see ingest/audio.py)
    missing = set(sf.available_formats()) - left_out - set(FORMAT_EXTENSIONS)
    assert not missing, missing
    for ext in (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".opus", ".caf", ".M4A"):
        assert is_audio_name("x" + ext), ext
    assert set(AUDIO_EXTENSIONS) >= {e for exts in FORMAT_EXTENSIONS.values() for e in exts}
    assert not is_audio_name("notes.txt") and not is_audio_name(".x.wav")


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile reads no MP3")
def test_mp3_decodes(tmp_path):
    p = str(tmp_path / "a.mp3")
    sf.write(p, tone(1000, 8000, 0.5, np.random.default_rng(0), noise=0.0), 8000, format="MP3")
    y, sr = read_audio(p)
    assert sr == 8000 and abs(peak_hz(y, sr) - 1000) < 20


def test_fifos_and_undecodable_formats_are_refused_without_opening(tmp_path):
    import os

    from convnet_cli.ingest.windows import recording_info

    fifo = str(tmp_path / "pipe.wav")
    os.mkfifo(fifo)                                      # opening it would block: never opened
    for reader in (read_audio, recording_info):
        with pytest.raises(AudioError, match=r"is a FIFO .*, not a regular file"):
            reader(fifo)
    m4a = tmp_path / "phone.m4a"
    m4a.write_bytes(b"\0\0\0\x20ftypM4A " + bytes(100))
    with pytest.raises(AudioError, match=r"does not decode \.m4a files; convert it"):
        read_audio(str(m4a))
