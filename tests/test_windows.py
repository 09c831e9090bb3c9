"""Windows over long recordings: start times, labels (docs/CONFIG.md), block resampling, features, bounded memory."""
from __future__ import annotations

import gc
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from convnet_cli.errors import DataError
from convnet_cli.ingest.annotations import Selection
from convnet_cli.ingest.audio import AudioError, fit_length, read_audio, resample
from convnet_cli.ingest.features import FeatureSpec, compute_features
from convnet_cli.ingest.windows import (iter_selected_window_features, iter_window_features, label_windows,
                                        recording_info, resample_blocks, window_starts)
from tests.annotation_fixtures import write_recording

SPEC = FeatureSpec.from_dict(dict(sample_rate=2000, duration=2.0, n_fft=256, hop=50, n_mels=40, fmin=20, fmax=600))


def S(begin, end, label="a"):
    return Selection("r", begin, end, label)


def test_window_starts():
    np.testing.assert_array_equal(window_starts(10.0, 2.0, 1.0), np.arange(9.0))     # 0..8: 8 + 2 = 10 fits
    np.testing.assert_array_equal(window_starts(9.99, 2.0, 1.0), np.arange(8.0))     # 8 + 2 > 9.99: dropped
    np.testing.assert_array_equal(window_starts(2.0, 2.0, 0.5), [0.0])
    assert window_starts(1.5, 2.0, 0.5).size == 0
    np.testing.assert_allclose(window_starts(3.0, 1.0, 0.1), np.arange(21) * 0.1)      # float steps: 2.0 kept
    assert window_starts(3.0, 1.0, 0.1).dtype == np.float64


def test_hand_computed_labels():
    # windows of 2 s every 1 s over 12 s: starts 0..10
    starts = window_starts(12.0, 2.0, 1.0)
    sels = [S(2.5, 3.5, "upcall"),    # 1 s call: w1 [1,3) overlap .5 -> .5 of the call: yes (>= 0.5)
                                      #           w2 [2,4) overlap 1 -> yes; w3 [3,5) overlap .5 -> yes
            S(7.2, 7.6, "gunshot")]   # 0.4 s: w6 [6,8) covers it all; w7 [7,9) too; w5 [5,7) no overlap
    got = label_windows(starts, 2.0, sels, 0.5, "bg")
    assert got == ["bg", "upcall", "upcall", "upcall", "bg", "bg", "gunshot", "gunshot", "bg", "bg", "bg"]


def test_min_overlap_edges_and_shorter_of_the_two():
    starts = np.array([0.0])
    # a 4 s annotation over a 2 s window: the window is the shorter, so overlap is measured against 2 s
    assert label_windows(starts, 2.0, [S(1.0, 5.0)], 0.5) == ["a"]                    # 1 s of 2 s = 0.5: in
    assert label_windows(starts, 2.0, [S(1.0001, 5.0)], 0.5) == [None]                # just under: ambiguous
    assert label_windows(starts, 2.0, [S(1.0, 5.0)], 0.51) == [None]
    assert label_windows(starts, 2.0, [S(0.5, 1.0)], 1.0) == ["a"]                     # a short call wholly inside
    assert label_windows(starts, 2.0, [S(1.8, 2.2)], 0.5) == ["a"]                     # 0.2 of 0.4 s: exactly half
    assert label_windows(starts, 2.0, [S(1.81, 2.2)], 0.5) == [None]
    # touching at the edge is not overlapping
    assert label_windows(starts, 2.0, [S(2.0, 3.0)], 0.5) == ["background"]
    assert label_windows(starts, 2.0, [S(0.0, 2.0)], 0.0) == ["a"]


def test_ambiguous_windows_left_out_and_two_classes():
    starts = window_starts(6.0, 2.0, 1.0)                        # 0..4
    # call A [1.6, 2.6): w0 [0,2) overlap .4 of 1 s -> ambiguous; w1 [1,3) all -> A; w2 [2,4) .6 -> A
    # call B [3.0, 4.0) in the same window as A: w2 has A .6 and B 1.0 -> B (largest overlap)
    got = label_windows(starts, 2.0, [S(1.6, 2.6, "A"), S(3.0, 4.0, "B")], 0.5)
    assert got == [None, "A", "B", "B", "background"]
    # equal overlaps: the label first in sorted order, whichever table order
    tie = [S(0.0, 1.0, "zeta"), S(1.0, 2.0, "alpha")]
    assert label_windows(np.array([0.0]), 2.0, tie, 0.5) == ["alpha"]
    assert label_windows(np.array([0.0]), 2.0, tie[::-1], 0.5) == ["alpha"]
    # a class window touched below the fraction by another class keeps its class
    assert label_windows(np.array([0.0]), 2.0, [S(0.2, 1.2, "A"), S(1.9, 3.0, "B")], 0.5) == ["A"]


@pytest.mark.parametrize("sr_in", [2000, 8000, 22050, 44100, 48000])
def test_block_resampling_equals_whole_file(tmp_path, sr_in):
    x = np.random.default_rng(sr_in).standard_normal(int(sr_in * 37.3)).astype(np.float32) * 0.3
    p = str(tmp_path / "a.wav")
    sf.write(p, x, sr_in, subtype="FLOAT")
    whole = resample(x, sr_in, 2000)
    for block_s in (1.7, 10.0, 60.0):
        blocks = list(resample_blocks(p, 2000, block_s=block_s))
        assert len(blocks) == int(np.ceil(whole.shape[0] / round(block_s * 2000)))
        np.testing.assert_allclose(np.concatenate(blocks), whole, rtol=0, atol=1e-6)


def _clip_features(path, start_s, spec):
    """The clip path: decode whole, resample, cut the same stretch, compute_features."""
    x, sr = read_audio(path)
    y = resample(x, sr, spec.sample_rate)
    a = int(round(start_s * spec.sample_rate))
    return compute_features(fit_length(y[a:a + spec.num_samples], spec.num_samples)[None], spec, np)[0]


@pytest.mark.parametrize("sr_in, hop_s, channels, kind", [
    (2000, 1.0, 1, "logmel"),     # hop on the STFT grid: frames shared between windows
    (44100, 0.5, 2, "logmel"),    # resampled stereo
    (2000, 0.333, 1, "mfcc"),     # off the grid: each window through compute_features alone
    (16000, 0.75, 1, "logspec"),
    (2000, 1.0, 1, "pcen"),       # on the grid: windows share the mel frames, PCEN runs on each window's own
])
def test_window_features_equal_clip_features(tmp_path, sr_in, hop_s, channels, kind):
    spec = FeatureSpec.from_dict({**SPEC.to_dict(), "kind": kind})
    p = write_recording(str(tmp_path / "r.flac"), 23.4, sr=sr_in, channels=channels,
                        calls=[(3.0, 4.0, 180.0), (15.2, 15.9, 400.0)], block_s=5.0)
    duration, sr = recording_info(p)
    assert sr == sr_in and abs(duration - 23.4) < 1e-9
    got_starts, got = [], []
    for starts, feats in iter_window_features(p, spec, hop_s, batch=7, block_s=6.0):
        assert len(starts) <= 7 and feats.dtype == np.float32 and feats.shape[1:] == spec.shape
        got_starts.append(starts)
        got.append(feats)
    got_starts, got = np.concatenate(got_starts), np.concatenate(got)
    np.testing.assert_allclose(got_starts, window_starts(duration, spec.duration, hop_s))
    for k in (0, 1, len(got_starts) // 2, len(got_starts) - 1):
        np.testing.assert_allclose(got[k], _clip_features(p, got_starts[k], spec), rtol=1e-5, atol=1e-4)


@pytest.fixture
def running_mean_kind():
    """A feature kind that is not frame-local (each frame is the running mean of the log spectrum so far),
    registered for one test."""
    import convnet_cli.ingest.features as feat

    @feat.register_kind
    class RunningMean(feat.LogSpec):
        name = "test_running_mean"
        frame_local = False

        def from_power(self, power, spec, xp):
            x = super().from_power(power, spec, xp)
            return (xp.cumsum(x, axis=1) / xp.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]).astype(x.dtype)

    yield RunningMean.name
    del feat.KIND_CLASSES[RunningMean.name]
    feat.KINDS = tuple(feat.KIND_CLASSES)


def test_a_kind_that_is_not_frame_local_never_shares_frames(tmp_path, running_mean_kind):
    # hop on the STFT grid, where a frame-local kind shares frames between overlapping windows: a kind whose
    # frames depend on the frames before them must be computed window by window, as a clip
    spec = FeatureSpec.from_dict({**SPEC.to_dict(), "kind": running_mean_kind})
    assert not spec.frame_local and FeatureSpec().frame_local
    p = write_recording(str(tmp_path / "r.flac"), 12.0, sr=2000, calls=[(3.0, 4.0, 180.0)], block_s=5.0)
    starts, feats = zip(*iter_window_features(p, spec, 1.0, batch=4, block_s=6.0))
    starts, feats = np.concatenate(starts), np.concatenate(feats)
    for k in range(len(starts)):
        np.testing.assert_allclose(feats[k], _clip_features(p, starts[k], spec), rtol=1e-5, atol=1e-4)


def test_pcen_windows_share_the_mel_frames_and_normalise_each_window_from_its_first_frame(tmp_path, monkeypatch):
    # the shared STFT run computes only the mel magnitudes (frames_only); PCEN's smoother then starts at each
    # window's first frame, so every window equals the same clip computed alone
    import convnet_cli.ingest.windows as windows

    spec = FeatureSpec.from_dict({**SPEC.to_dict(), "kind": "pcen"})
    assert spec.shares_frames and not spec.frame_local
    calls = []
    real = windows.compute_features

    def spy(signals, spec_, xp, frames_only=False):
        calls.append(frames_only)
        return real(signals, spec_, xp, frames_only=frames_only)

    monkeypatch.setattr(windows, "compute_features", spy)
    p = write_recording(str(tmp_path / "r.flac"), 12.0, sr=2000, calls=[(3.0, 4.0, 180.0)], block_s=5.0)
    starts, feats = zip(*iter_window_features(p, spec, 1.0, batch=4, block_s=6.0))
    starts, feats = np.concatenate(starts), np.concatenate(feats)
    assert calls and all(calls)
    monkeypatch.undo()
    for k in range(len(starts)):
        np.testing.assert_allclose(feats[k], _clip_features(p, starts[k], spec), rtol=1e-5, atol=1e-5)
    # the first frame of every window is normalised from the smoother's start, not from the frames before it
    assert not np.allclose(feats[1][0, :, 0], feats[0][0, :, spec.num_frames // 2], atol=1e-3)


def test_selected_windows_equal_the_same_windows_of_all(tmp_path):
    p = write_recording(str(tmp_path / "r.wav"), 200.0, sr=4000, calls=[(50, 51, 300)])
    full = np.concatenate([f for _, f in iter_window_features(p, SPEC, 1.0)])
    keep = np.array([0, 3, 4, 120, 121, 198])
    seen = []
    parts = list(iter_selected_window_features(p, SPEC, 1.0, keep, batch=4, block_s=10.0, on_block=seen.append))
    np.testing.assert_array_equal(np.concatenate([s for s, _ in parts]), keep.astype(float))
    np.testing.assert_allclose(np.concatenate([f for _, f in parts]), full[keep], atol=1e-5)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(200.0)


def test_a_call_shows_in_its_windows(tmp_path):
    # a 300 Hz call at 10-11 s: the windows holding it are far louder in the band of 300 Hz than the others
    p = write_recording(str(tmp_path / "r.flac"), 30.0, calls=[(10.0, 11.0, 300.0)])
    starts, feats = zip(*iter_window_features(p, SPEC, 1.0))
    starts, feats = np.concatenate(starts), np.concatenate(feats)
    energy = feats[:, 0].max(axis=(1, 2))
    inside = (starts <= 10.0) & (starts + 2.0 >= 11.0)
    assert energy[inside].min() > energy[~((starts < 11.0) & (starts + 2.0 > 10.0))].max() + 3.0


def test_unreadable_and_absurd_recordings(tmp_path):
    bad = tmp_path / "text.wav"
    bad.write_text("not audio" * 100)
    with pytest.raises(AudioError, match="cannot decode"):
        recording_info(str(bad))
    with pytest.raises(DataError, match="not found"):
        recording_info(str(tmp_path / "missing.flac"))
    p = str(tmp_path / "rate.wav")
    sf.write(p, np.zeros(1000, np.float32), 2000, subtype="PCM_16")
    blob = bytearray(open(p, "rb").read())
    blob[24:28] = struct.pack("<I", 5_000_000)      # the fmt chunk's sample rate
    open(p, "wb").write(bytes(blob))
    with pytest.raises(AudioError, match="absurd sample rate 5000000"):
        recording_info(p)
    with pytest.raises(AudioError, match="absurd sample rate"):
        next(iter_window_features(p, SPEC, 1.0))
    z = str(tmp_path / "zero.wav")
    sf.write(z, np.zeros(0, np.float32), 2000)
    with pytest.raises(AudioError, match="zero-length"):
        recording_info(z)


def test_truncated_recording_fails_part_way(tmp_path):
    p = write_recording(str(tmp_path / "r.wav"), 120.0)
    blob = open(p, "rb").read()
    open(p, "wb").write(blob[:len(blob) // 2])
    with pytest.raises(AudioError, match="truncated"):
        for _ in iter_window_features(p, SPEC, 1.0, block_s=10.0):
            pass


def _peak_bytes(path):
    gc.collect()
    tracemalloc.start()
    try:
        n = 0
        for starts, _ in iter_window_features(path, SPEC, 1.0, block_s=60.0):
            n += len(starts)
        return tracemalloc.get_traced_memory()[1], n
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_with_length(tmp_path):
    short = write_recording(str(tmp_path / "short.flac"), 300.0, sr=8000, block_s=60.0)
    long = write_recording(str(tmp_path / "long.flac"), 1800.0, sr=8000, block_s=60.0)
    _peak_bytes(short)                      # first run: imports and one-time tables, not the recording
    peak_short, n_short = _peak_bytes(short)
    peak_long, n_long = _peak_bytes(long)
    assert n_long == 1799 and n_short == 299
    # one block of audio at 8 kHz (60 s: 1.9 MB float32) and its resampled run; the 30-minute file holds
    # 57 MB of float32 samples, which must never be in memory at once
    assert peak_long < 1.25 * peak_short + 1e6, (peak_short, peak_long)
    assert peak_long < 12e6
