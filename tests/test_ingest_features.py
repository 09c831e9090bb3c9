"""Spectrogram features against an independent computation (torch.stft, a loop-built mel matrix, scipy's DCT),
and the checks of FeatureSpec."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.signal

from convnet_cli.config.yamlio import load_yaml_text
from convnet_cli.errors import ConfigError
from convnet_cli.ingest.features import FeatureSpec, compute_features, mel_filterbank, window


def signals(n=3, samples=4000, sr=8000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sr
    out = [0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(samples)
           for f in np.linspace(200, 3000, n)]
    return np.asarray(out, dtype=np.float32)


def ref_mel_matrix(sr, n_fft, n_mels, fmin, fmax):
    """Triangles on the HTK mel scale, written band by band, bin by bin (not vectorised like the real one)."""
    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    lo, hi = mel(fmin), mel(fmax)
    corners = [hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    m = np.zeros((n_fft // 2 + 1, n_mels))
    for b in range(n_mels):
        left, center, right = corners[b], corners[b + 1], corners[b + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if left <= f <= center:
                m[k, b] = (f - left) / (center - left)
            elif center < f <= right:
                m[k, b] = (right - f) / (right - center)
    return m


def ref_features(x, spec: FeatureSpec):
    """(n, H, W) float64 through torch.stft (center=False, periodic window)."""
    torch = pytest.importorskip("torch")
    win = torch.from_numpy(scipy.signal.get_window(spec.window, spec.n_fft, fftbins=True))
    X = torch.stft(torch.from_numpy(x.astype(np.float64)), spec.n_fft, hop_length=spec.hop, window=win,
                   center=False, return_complex=True)            # (n, F, W)
    mag = X.abs().numpy()
    if spec.kind == "spec":
        return mag
    if spec.kind == "logspec":
        return np.log(mag + 1e-6)
    fb = ref_mel_matrix(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax_hz)
    mel = np.einsum("nfw,fm->nmw", mag ** 2, fb)
    if spec.kind == "mel":
        return mel
    logmel = np.log(mel + 1e-6)
    if spec.kind == "logmel":
        return logmel
    return scipy.fft.dct(logmel, type=2, norm="ortho", axis=1)[:, :spec.n_mfcc]


@pytest.mark.parametrize("kind", ["logmel", "mel", "logspec", "spec", "mfcc"])
@pytest.mark.parametrize("win", ["hann", "hamming", "blackman"])
def test_features_match_torch_stft(kind, win):
    spec = FeatureSpec.from_dict(dict(sample_rate=8000, duration=0.5, kind=kind, n_fft=256, hop=100, window=win,
                                      n_mels=24, fmin=50, fmax=3500, n_mfcc=13), "test")
    x = signals()
    ours = compute_features(x, spec, np)
    assert ours.dtype == np.float32
    assert ours.shape == (3,) + spec.shape == (3, 1, spec.num_bins, 1 + (4000 - 256) // 100)
    ref = ref_features(x, spec)
    if kind in ("spec", "mel"):
        np.testing.assert_allclose(ours[:, 0], ref, rtol=2e-4, atol=2e-5 * ref.max())
    else:
        np.testing.assert_allclose(ours[:, 0], ref, rtol=0, atol=2e-3)


@pytest.mark.parametrize("params", [
    {},                                                        # librosa's defaults
    {"pcen_time_constant": 0.06, "pcen_gain": 0.8, "pcen_bias": 10.0, "pcen_power": 0.25, "pcen_eps": 1e-4},
    {"pcen_power": 0.0},                                       # the log1p form
    {"pcen_bias": 0.0},                                        # the plain power form
    {"pcen_power": 1.0},                                       # power 1: no compression
    {"pcen_power": 0.5, "pcen_bias": 0.5},                     # the default power with another bias
])
def test_pcen_equals_librosa_on_the_same_mel_magnitudes(params):
    librosa = pytest.importorskip("librosa", reason="librosa is the PCEN reference (pip install librosa)")
    spec = FeatureSpec.from_dict(dict(sample_rate=8000, duration=0.5, kind="pcen", n_fft=256, hop=100, n_mels=24,
                                      fmin=50, fmax=3500, **params), "test")
    assert spec.shape[1] == 24 and not spec.frame_local
    rng = np.random.default_rng(3)
    x = signals() * np.linspace(0.2, 3.0, 4000, dtype=np.float32)    # a level that drifts within the clip
    x[1] += (0.05 * rng.standard_normal(4000)).astype(np.float32)
    ours = compute_features(x, spec, np)[:, 0]
    assert ours.dtype == np.float32
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 256, axis=1)[:, ::100]
    mag = np.abs(np.fft.rfft(frames * window(spec), axis=-1))        # |X|: PCEN's input is the mel magnitude
    mel = np.einsum("nwf,fm->nmw", mag, ref_mel_matrix(8000, 256, 24, 50.0, 3500.0))
    kw = {k[len("pcen_"):]: v for k, v in spec.to_dict().items() if k.startswith("pcen_")}
    ref = np.stack([librosa.pcen(m, sr=8000, hop_length=100, **kw) for m in mel])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_pcen_removes_a_level_drift_that_logmel_keeps():
    # stationary noise whose level rises 10x over the clip: logmel's mean moves by log(100) = 4.6 per band,
    # PCEN's adaptive gain takes most of it out
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal((1, 16000)) * np.linspace(1, 10, 16000)).astype(np.float32)
    base = dict(sample_rate=8000, duration=2.0, n_fft=256, hop=128, n_mels=16)
    drift = {}
    for kind in ("logmel", "pcen"):
        f = compute_features(x, FeatureSpec.from_dict({**base, "kind": kind}), np)[0, 0]
        w = f.shape[1]
        drift[kind] = abs(float(f[:, -w // 5:].mean() - f[:, w // 10:w // 5].mean())) / float(f.std())
    assert drift["pcen"] < 0.5 * drift["logmel"]


@pytest.mark.parametrize("doc, words", [
    ({"kind": "pcen", "pcen_time_constant": 0}, ["pcen_time_constant 0", "positive"]),
    ({"kind": "pcen", "pcen_gain": -1}, ["pcen_gain -1", "at least 0"]),
    ({"kind": "pcen", "pcen_eps": "small"}, ["pcen_eps", "number"]),
    ({"normalize": "bands"}, ["normalize 'bands'", "did you mean 'band'"]),
])
def test_bad_pcen_and_normalize_settings(doc, words):
    with pytest.raises(ConfigError) as e:
        FeatureSpec.from_dict(doc, "features.yaml")
    for w in words:
        assert w in str(e.value)


def test_features_dict_keeps_its_keys_and_adds_only_what_a_spec_uses():
    assert "pcen_gain" not in FeatureSpec().to_dict() and "normalize" not in FeatureSpec().to_dict()
    p = FeatureSpec.from_dict({"kind": "pcen", "pcen_gain": 0.9, "normalize": "band"})
    d = p.to_dict()
    assert d["pcen_gain"] == 0.9 and d["pcen_eps"] == 1e-6 and d["normalize"] == "band" and d["n_mfcc"] == 20
    assert FeatureSpec.from_dict(d) == p and p.normalization == "band" and FeatureSpec().normalization == "pixel"
    # a logmel spec given a pcen key (not its own) keeps it, so nothing given is lost
    assert FeatureSpec.from_dict({"pcen_gain": 0.5}).to_dict()["pcen_gain"] == 0.5


def test_mel_matrix_is_htk_triangles_and_window_is_periodic():
    spec = FeatureSpec(sample_rate=16000, n_fft=512, n_mels=40, fmin=20.0, fmax=7600.0)
    np.testing.assert_allclose(mel_filterbank(spec), ref_mel_matrix(16000, 512, 40, 20.0, 7600.0), atol=1e-6)
    for name in ("hann", "hamming", "blackman"):
        s = FeatureSpec(window=name)
        np.testing.assert_allclose(window(s), scipy.signal.get_window(name, 512, fftbins=True), atol=1e-6)


def test_row_zero_is_lowest_frequency_and_frames_unpadded():
    sr, n = 8000, 4000
    t = np.arange(n) / sr
    low = np.sin(2 * np.pi * 250 * t)
    high = np.sin(2 * np.pi * 3000 * t)
    spec = FeatureSpec(sample_rate=sr, duration=0.5, kind="spec", n_fft=256, hop=128)
    f = compute_features(np.stack([low, high]).astype(np.float32), spec, np)
    peak = f[:, 0].mean(axis=2).argmax(axis=1)
    assert list(peak) == [round(250 / (sr / 256)), round(3000 / (sr / 256))]
    assert f.shape[-1] == 1 + (n - 256) // 128 == spec.num_frames
    # the last frame ends inside the clip: changing the samples after it changes nothing
    y = np.stack([low]).astype(np.float32)
    y2 = y.copy()
    end = (spec.num_frames - 1) * 128 + 256
    y2[:, end:] = 5.0
    np.testing.assert_array_equal(compute_features(y, spec, np), compute_features(y2, spec, np))


def test_chunking_does_not_change_results(monkeypatch):
    import convnet_cli.ingest.features as feat

    spec = FeatureSpec(sample_rate=8000, duration=0.5, n_fft=256, hop=128, n_mels=16)
    x = signals(n=7)
    whole = compute_features(x, spec, np)
    monkeypatch.setattr(feat, "_FRAME_BYTES", 1)   # one clip per FFT call
    np.testing.assert_array_equal(compute_features(x, spec, np), whole)


def test_defaults_and_shape():
    spec = FeatureSpec.from_dict({}, "features.yaml")
    assert spec.to_dict() == dict(sample_rate=16000, duration=2.0, kind="logmel", n_fft=512, hop=160,
                                  window="hann", n_mels=64, fmin=0.0, fmax=None, n_mfcc=20)
    assert spec.shape == (1, 64, 1 + (32000 - 512) // 160)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert FeatureSpec.from_dict({"kind": "logspec"}).shape[1] == 257
    assert FeatureSpec.from_dict({"kind": "mfcc", "n_mfcc": 13}).shape[1] == 13


@pytest.mark.parametrize("doc, words", [
    ({"nmels": 40}, ["features.yaml", "unknown features key 'nmels'", "did you mean 'n_mels'"]),
    ({"kind": "logmels"}, ["kind 'logmels'", "did you mean 'logmel'"]),
    ({"window": "hanning"}, ["window 'hanning'", "hann"]),
    ({"sample_rate": 16000.5}, ["sample_rate", "integer"]),
    ({"hop": 0}, ["hop", "at least 1"]),
    ({"n_fft": "big"}, ["n_fft", "integer"]),
    ({"duration": 0.01}, ["duration", "fewer than n_fft 512"]),
    ({"fmax": 9000}, ["fmax 9000", "Nyquist"]),
    ({"fmin": 4000, "fmax": 3000}, ["fmax 3000", "above fmin"]),
    ({"kind": "mfcc", "n_mfcc": 80}, ["n_mfcc 80", "n_mels 64"]),
    ({"n_fft": 64, "n_mels": 64}, ["n_mels 64 is too many", "covers no FFT bin"]),
    ({"duration": True}, ["duration", "number"]),
])
def test_bad_feature_settings_name_file_key_and_fix(doc, words):
    with pytest.raises(ConfigError) as e:
        FeatureSpec.from_dict(doc, "features.yaml")
    for w in words:
        assert w in str(e.value)


def test_error_names_the_yaml_line():
    doc = load_yaml_text("sample_rate: 16000\nkind: logmel\nn_mel: 40\n", "feat.yaml")
    want = r"feat.yaml: unknown features key 'n_mel' \(did you mean 'n_mels'\?\) \(line 3\)"
    with pytest.raises(ConfigError, match=want):
        FeatureSpec.from_dict(doc, "feat.yaml")


def test_gpu_features_match_cpu():
    cupy = pytest.importorskip("cupy")
    try:
        cupy.zeros(1)
    except Exception:
        pytest.skip("no working GPU")
    spec = FeatureSpec(sample_rate=8000, duration=0.5, n_fft=256, hop=100, n_mels=24, kind="mfcc", n_mfcc=13)
    x = signals()
    np.testing.assert_allclose(cupy.asnumpy(compute_features(cupy.asarray(x), spec, cupy)),
                               compute_features(x, spec, np), atol=1e-3)
