"""--time-expansion F (SPEC 19): a recording stored slowed down F times (a bat detector's time-expanded WAV, e.g. a
38.4 kHz header for sound recorded at 384 kHz with F = 10) is read at F times its header's rate, so names, tables,
detections and frequencies are in real time: the same as the real-rate file holding the same samples."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import soundfile as sf

from convnet_cli.errors import ConfigError
from convnet_cli.ingest.audio import check_time_expansion, read_audio
from convnet_cli.ingest.windows import recording_info
from tests.annotation_fixtures import write_recording
from tests.detect_fixtures import signal, tone_checkpoint
from tests.helpers import invoke
from tests.test_make_batches_annotations import cases

BAT_FEATURES = os.path.join(os.path.dirname(__file__), "..", "convnet_cli", "layer_configs", "bat-features.yaml")


def _same_samples(src, dst, rate):
    """dst: the samples of src, its header saying `rate`."""
    x, _ = sf.read(str(src), dtype="float32")
    sf.write(str(dst), x, rate, subtype="FLOAT")


def one_line_error(result):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_header_rate_times_the_factor(tmp_path):
    p = tmp_path / "te.wav"
    sf.write(str(p), np.zeros(38400 * 3, np.float32), 38400)          # 3 s of file, 0.3 s of real time
    assert recording_info(str(p)) == (3.0, 38400)
    duration, sr = recording_info(str(p), 10)
    assert sr == 384000 and abs(duration - 0.3) < 1e-12
    x, sr = read_audio(str(p), time_expansion=10)
    assert sr == 384000 and x.size == 38400 * 3
    assert check_time_expansion(None) == 1.0 and check_time_expansion("10") == 10.0
    for bad in (0, -1, float("nan"), float("inf"), 5000):
        with pytest.raises(ConfigError, match="--time-expansion"):
            check_time_expansion(bad)


@pytest.fixture(scope="module")
def bats(tmp_path_factory):
    """A 2-s (real time) 384 kHz recording with a 40 kHz call at 0.5-0.7 s, as a real-rate file and as a
    time-expanded one (the same samples, header 38.4 kHz), with a table in real time."""
    root = tmp_path_factory.mktemp("bats")
    write_recording(str(root / "real" / "pass.wav"), 2.0, sr=384000, calls=[(0.5, 0.7, 40000.0)], seed=3,
                    subtype="FLOAT")
    (root / "te").mkdir()
    _same_samples(root / "real" / "pass.wav", root / "te" / "pass.wav", 38400)
    (root / "tables").mkdir()
    (root / "tables" / "pass.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tAnnotation\n"
        "1\tSpectrogram 1\t1\t0.5\t0.7\t35000\t45000\tpip\n")
    return root


def _windows(root, rec, out, *extra):
    return invoke(["make-batches", str(root / rec), str(out), "--annotations", str(root / "tables"), "--features",
                   BAT_FEATURES, "--window-hop", "0.125", "--jobs", "1", "--quiet", "--test-fraction", "0",
                   "--label-names", "background,pip", *extra])


def test_make_batches_annotations_in_real_time(bats, tmp_path):
    r = _windows(bats, "te", tmp_path / "te", "--time-expansion", "10")
    assert r.exit_code == 0, r.output
    meta, got = cases(tmp_path / "te")
    starts = [k * 0.125 for k in range(15)]                   # 2 s of real time, 0.25-s windows
    assert set(got) == {f"pass.wav@{s:.3f}" for s in starts} - {"pass.wav@0.625"}   # 0.075 of 0.2 s: left out
    assert {n for n, v in got.items() if v[0] == "pip"} == {f"pass.wav@{s:.3f}" for s in (0.375, 0.5)}
    r = _windows(bats, "real", tmp_path / "real")
    assert r.exit_code == 0, r.output
    _, ref = cases(tmp_path / "real")
    for name in got:                                          # the same features as the real-rate file
        np.testing.assert_array_equal(got[name][2], ref[name][2])
    # without the factor the file is 20 s long at 38.4 kHz: other windows, the call at 4 kHz (out of the band)
    r = _windows(bats, "te", tmp_path / "slow")
    assert r.exit_code == 0, r.output
    _, slow = cases(tmp_path / "slow")
    assert len(slow) == 159 - 1 and "pass.wav@19.750" in slow     # 159 windows, one ambiguous
    line = one_line_error(_windows(bats, "te", tmp_path / "bad", "--time-expansion", "0"))
    assert line.startswith("convnet: error: --time-expansion 0")


def test_clips_and_predict_in_real_time(tmp_path):
    """Clips: a 200 Hz header with F = 10 reads as the 2 kHz file of the same samples."""
    for c, events in (("tone", [(0, 1)]), ("noise", [])):
        for rate, folder in ((2000, "real"), (200, "te")):
            (tmp_path / folder / c).mkdir(parents=True, exist_ok=True)
            for i in range(3):
                sf.write(str(tmp_path / folder / c / f"{i}.wav"), signal(2000, 1.0, events, seed=i + 9 * len(c)),
                         rate, subtype="FLOAT")
    feats = tmp_path / "f.yaml"
    feats.write_text("sample_rate: 1000\nduration: 1.0\nn_fft: 128\nhop: 50\nn_mels: 16\nfmin: 50\nfmax: 450\n")
    for folder, extra in (("real", []), ("te", ["--time-expansion", "10"])):
        r = invoke(["make-batches", str(tmp_path / folder), str(tmp_path / f"b_{folder}"), "--features", str(feats),
                    "--jobs", "1", "--quiet", "--test-fraction", "0", *extra])
        assert r.exit_code == 0, r.output
    _, real = cases(tmp_path / "b_real")
    _, te = cases(tmp_path / "b_te")
    assert set(real) == set(te)
    for name in real:
        np.testing.assert_array_equal(te[name][2], real[name][2])
    ck = tone_checkpoint(tmp_path / "best.npz")
    rows = {}
    for folder, extra in (("real", []), ("te", ["--time-expansion", "10"]), ("slow", [])):
        out = tmp_path / f"{folder}.csv"
        r = invoke(["predict", "-f", str(ck), str(tmp_path / ("te" if folder == "slow" else folder) / "tone"),
                    "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        with open(out, newline="") as f:
            rows[folder] = {row["filename"]: row for row in csv.DictReader(f)}
    assert rows["te"] == rows["real"] and {r["predicted"] for r in rows["te"].values()} == {"tone"}
    assert {r["predicted"] for r in rows["slow"].values()} == {"noise"}      # a 20 Hz tone without the factor


def test_detect_times_and_frequencies_in_real_time(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")       # 1 kHz features, 50-450 Hz, a 200 Hz tone detector
    (tmp_path / "rec").mkdir()
    tones = [(10.0, 12.0), (25.0, 27.0)]
    sf.write(str(tmp_path / "rec" / "te.wav"), signal(2000, 40.0, tones, seed=5), 200, subtype="FLOAT")
    out = tmp_path / "out"
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(out), "--quiet",
                "--time-expansion", "10", "--scores"])
    assert r.exit_code == 0, r.output
    assert "40.0 s of audio" in r.output                     # real time, not the file's 400 s (6.7 min)
    with open(out / "te.selections.txt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 2
    for row, (b, e) in zip(rows, tones):
        assert abs(float(row["Begin Time (s)"]) - b) <= 0.5 and abs(float(row["End Time (s)"]) - e) <= 0.5
        assert (row["Low Freq (Hz)"], row["High Freq (Hz)"]) == ("50.0", "450.0")
    with open(out / "scores.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert float(last["end_s"]) <= 40.0                      # windows over the real 40 s
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(out), "--quiet", "--resume"])
    assert r.exit_code == 2 and "time_expansion" in r.output  # another factor: other settings
