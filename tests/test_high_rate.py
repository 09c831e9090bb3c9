"""Ultrasonic recordings (SPEC 19): 384 and 768 kHz files (bat and porpoise recorders) read in bounded blocks,
resampled without seams, and the bat starter features (layer_configs/bat-features.yaml) whose fmin/fmax select
the 15-120 kHz band. Peak memory is measured in benchmarks/bench_high_rate.py, not here."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from convnet_cli.ingest.features import FeatureSpec
from convnet_cli.ingest.windows import RecordingReader, iter_window_features
from tests.annotation_fixtures import write_recording
from tests.helpers import invoke
from tests.test_make_batches_annotations import cases

BAT_FEATURES = os.path.join(os.path.dirname(__file__), "..", "convnet_cli", "layer_configs", "bat-features.yaml")


def bat_spec():
    return FeatureSpec.from_file(BAT_FEATURES, {})


def test_bat_features_select_the_band():
    spec = bat_spec()
    assert spec.sample_rate == 256000 and spec.fmin == 15000 and spec.fmax_hz == 120000
    assert spec.shape == (1, 64, 249) and spec.fmax_hz < spec.sample_rate / 2


@pytest.fixture(scope="module")
def ultrasound(tmp_path_factory):
    """12 s at 384 kHz, written in 1-s blocks: a 40 kHz call (in the band) at 2.0-2.2 s, a 5 kHz tone (below
    it) at 6.0-6.2 s, and a 768 kHz file of 3 s with a 100 kHz call at 1.0-1.2 s."""
    root = tmp_path_factory.mktemp("ultra")
    write_recording(str(root / "rec" / "bat384.wav"), 12.0, sr=384000, block_s=1.0, noise=0.01, seed=2,
                    calls=[(2.0, 2.2, 40000.0), (6.0, 6.2, 5000.0)])
    write_recording(str(root / "r768" / "bat768.wav"), 3.0, sr=768000, block_s=1.0, noise=0.01, seed=3,
                    calls=[(1.0, 1.2, 100000.0)])
    for t in ("rec", "r768"):
        (root / "tables" / t).mkdir(parents=True)
    (root / "tables" / "rec" / "bat384.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n1\tSpectrogram 1\t1\t2.0\t2.2\tpip\n")
    (root / "tables" / "r768" / "bat768.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n1\tSpectrogram 1\t1\t1.0\t1.2\tpip\n")
    return root


def test_blocks_resample_384k_without_seams(ultrasound, monkeypatch):
    """The reader's blocks (small ones here) give the whole-file resample_poly result, and it never asks
    soundfile for more than DECODE_FRAMES frames at once."""
    from scipy.signal import resample_poly

    import convnet_cli.ingest.windows as windows

    path = str(ultrasound / "rec" / "bat384.wav")
    x, _ = sf.read(path, dtype="float32", frames=384000 * 3)
    whole = resample_poly(x, 2, 3).astype(np.float32)          # 384 -> 256 kHz
    asked = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *a, **k):
        asked.append(frames)
        return real_read(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    r = RecordingReader(path, 256000)
    try:
        step = 100_003
        got = np.concatenate([r.read(o, o + step) for o in range(0, 256000 * 2, step)])
    finally:
        r.close()
    n = got.size
    np.testing.assert_allclose(got, whole[:n], atol=2e-6)      # the first 2 s: far from the 3-s cut's edge
    assert asked and max(asked) <= windows.DECODE_FRAMES and min(asked) > 0


def test_window_features_do_not_depend_on_the_block(ultrasound, monkeypatch):
    import convnet_cli.ingest.windows as windows

    spec = bat_spec()
    path = str(ultrasound / "rec" / "bat384.wav")
    ref = [(s, f) for s, f in iter_window_features(path, spec, 0.125, batch=64)]
    monkeypatch.setattr(windows, "MAX_BLOCK_SAMPLES", 3 * spec.num_samples)   # many short blocks
    small = [(s, f) for s, f in iter_window_features(path, spec, 0.125, batch=64)]
    starts = np.concatenate([s for s, _ in ref])
    assert starts.size == int((12.0 - 0.25) / 0.125) + 1
    np.testing.assert_array_equal(starts, np.concatenate([s for s, _ in small]))
    np.testing.assert_allclose(np.concatenate([f for _, f in small]), np.concatenate([f for _, f in ref]),
                               atol=2e-4)


def test_band_keeps_the_call_and_leaves_out_the_low_tone(ultrasound):
    spec = bat_spec()
    path = str(ultrasound / "rec" / "bat384.wav")
    feats = {round(float(s), 3): f[0] for ss, ff in iter_window_features(path, spec, 0.25, batch=64)
             for s, f in zip(ss, ff)}
    call, low, quiet = feats[2.0], feats[6.0], feats[10.0]        # (64, 249) log-mel each
    assert call.max() - quiet.max() > 5.0                          # the 40 kHz call stands out
    assert abs(low.mean() - quiet.mean()) < 0.1                    # the 5 kHz tone is outside 15-120 kHz


def test_make_batches_annotations_at_384k_and_768k(ultrasound, tmp_path):
    for rec, n_windows, calls in (("rec", 95, {1.875, 2.0}), ("r768", 23, {0.875, 1.0})):
        out = tmp_path / rec
        r = invoke(["make-batches", str(ultrasound / rec), str(out), "--annotations", str(ultrasound / "tables" / rec),
                    "--features", BAT_FEATURES, "--window-hop", "0.125", "--jobs", "1", "--quiet",
                    "--test-fraction", "0", "--label-names", "background,pip"])
        assert r.exit_code == 0, r.output
        meta, got = cases(out)
        assert meta["features"]["sample_rate"] == 256000 and meta["features"]["fmin"] == 15000
        name = next(iter(got)).split("@")[0]
        assert {round(float(n.split("@")[1]), 3) for n, v in got.items() if v[0] == "pip"} == calls, name
        assert len(got) == n_windows - 1          # the window the call overlaps by 0.075 of 0.2 s is left out
