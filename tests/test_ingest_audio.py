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
