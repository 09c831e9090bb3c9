"""make-batches --noise-dir / --noise-snr / --copies / --gain (ingest/noise.py): noisy copies of the
training clips, mixed on the waveform before the features; seeded; the test range untouched."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from convnet_cli.data.batch_files import META, restricted_load
from convnet_cli.errors import ConfigError
from convnet_cli.ingest.audio import load_clip
from convnet_cli.ingest.features import FeatureSpec, compute_features
from convnet_cli.ingest.noise import make_copy, mix, noise_options, parse_db_range, read_stretch
from tests.audio_fixtures import make_tone_dataset, write_clip
from tests.helpers import invoke

SR = 8000
FEATURES = "sample_rate: 8000\nduration: 0.5\nkind: logmel\nn_fft: 256\nhop: 128\nn_mels: 16\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    make_tone_dataset(str(root / "audio"), per_class=6, sr=SR, seconds=0.5)
    rng = np.random.default_rng(9)
    for i, seconds in enumerate((3.0, 0.2)):                # one long recording, one shorter than a clip
        write_clip(str(root / "noise" / f"n{i}.wav"), (0.3 * rng.standard_normal(int(SR * seconds))).astype(np.float32),
                   SR)
    (root / "features.yaml").write_text(FEATURES)
    return root


def mb(ws, out, *extra):
    return invoke(["make-batches", str(ws / "audio"), str(out), "--features", str(ws / "features.yaml"),
                   "--batch-size", "4", "--test-fraction", "0.25", "--jobs", "1", "--quiet", *extra])


def read_set(batch_dir):
    meta = restricted_load(os.path.join(batch_dir, META))
    cases = {}
    for b in range(1, meta["num_batches"] + 1):
        d = restricted_load(os.path.join(batch_dir, f"data_batch_{b}"))
        for j, (name, lab) in enumerate(zip(d["filenames"], d["labels"])):
            cases[name] = (b, lab, np.array(d["data"][:, j]))
    return meta, cases


def in_range(meta, b, which):
    lo, hi = meta[which]
    return lo <= b <= hi


def test_copies_are_noisy_training_clips_and_the_test_range_is_untouched(ws, tmp_path):
    r = mb(ws, tmp_path / "clean")
    assert r.exit_code == 0, r.output
    r = mb(ws, tmp_path / "noisy", "--noise-dir", str(ws / "noise"), "--copies", "2", "--noise-snr", "5,10")
    assert r.exit_code == 0, r.output
    assert "make-batches: 12 files read" in r.output
    assert "augmented: 16 copies written (2 copies per training clip, noise from 2 recordings" in r.output
    meta0, clean = read_set(tmp_path / "clean")
    meta1, noisy = read_set(tmp_path / "noisy")
    train = [n for n, (b, _, _) in clean.items() if in_range(meta0, b, "train_range")]
    test = [n for n, (b, _, _) in clean.items() if in_range(meta0, b, "test_range")]
    assert train and test
    # every training clip: itself unchanged, and two copies with its label and other data
    for name in train:
        assert np.array_equal(noisy[name][2], clean[name][2])
        assert in_range(meta1, noisy[name][0], "train_range")
        for k in (1, 2):
            b, lab, x = noisy[f"{name}#copy{k}"]
            assert in_range(meta1, b, "train_range") and lab == clean[name][1]
            assert not np.allclose(x, clean[name][2])
        assert not np.array_equal(noisy[f"{name}#copy1"][2], noisy[f"{name}#copy2"][2])
    # the test range: the same clips, the same data, no copies
    assert sorted(n for n, (b, _, _) in noisy.items() if in_range(meta1, b, "test_range")) == sorted(test)
    for name in test:
        assert np.array_equal(noisy[name][2], clean[name][2])
    assert len(noisy) == len(clean) + 2 * len(train)
    assert meta1["copies"]["copies"] == 2 and meta1["copies"]["noise_snr"] == [5.0, 10.0]
    # the normalisation statistics cover the copies (they are training data)
    assert not np.allclose(meta1["data_mean"], meta0["data_mean"])


def test_copies_are_seeded_and_independent_of_jobs(ws, tmp_path):
    args = ("--noise-dir", str(ws / "noise"), "--gain", "-6,6", "--seed", "3")
    assert mb(ws, tmp_path / "a", *args).exit_code == 0
    r = invoke(["make-batches", str(ws / "audio"), str(tmp_path / "b"), "--features", str(ws / "features.yaml"),
                "--batch-size", "4", "--test-fraction", "0.25", "--jobs", "2", "--quiet", *args])
    assert r.exit_code == 0, r.output
    assert mb(ws, tmp_path / "c", "--noise-dir", str(ws / "noise"), "--gain", "-6,6", "--seed", "4").exit_code == 0
    _, a = read_set(tmp_path / "a")
    _, b = read_set(tmp_path / "b")
    _, c = read_set(tmp_path / "c")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[n][2], b[n][2]) for n in a)
    common = [n for n in a if n.endswith("#copy1") and n in c]
    assert common and all(not np.array_equal(a[n][2], c[n][2]) for n in common)  # another seed, other copies


def test_copy_is_the_clip_plus_noise_at_the_drawn_snr(ws):
    """The waveform a copy's features come from: clip + noise scaled to the SNR (checked by recomputing)."""
    spec = FeatureSpec.from_dict({"sample_rate": SR, "duration": 0.5, "n_fft": 256, "hop": 128, "n_mels": 16}, "t")
    opts = noise_options(str(ws / "noise"), "10,10", 1, None, 0)
    clip = load_clip(str(next((ws / "audio" / "low").iterdir())), spec)
    out = make_copy(clip, SR, opts, case=5, copy=1)
    noise = out - clip
    snr = 10 * math.log10(np.mean(clip.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=1e-3)
    assert np.array_equal(out, make_copy(clip, SR, opts, case=5, copy=1))
    assert not np.array_equal(out, make_copy(clip, SR, opts, case=5, copy=2))
    assert compute_features(out[None], spec, np).shape == (1,) + spec.shape
    # a silent clip gets the noise relative to -40 dBFS; a short noise recording is looped
    y = mix(np.zeros(1000, np.float32), np.ones(1000, np.float32), 0.0)
    assert np.mean(y ** 2) == pytest.approx(1e-4, rel=1e-5)
    short = read_stretch(str(ws / "noise" / "n1.wav"), int(0.2 * SR), SR, 4000, SR, np.random.default_rng(0))
    assert short.shape == (4000,) and np.array_equal(short[:1600], short[1600:3200])


def test_gain_only_copies(ws):
    opts = noise_options(None, None, 1, "-6,-6", 0)
    clip = np.linspace(-0.5, 0.5, 100).astype(np.float32)
    np.testing.assert_allclose(make_copy(clip, SR, opts, 0, 1), clip * 10 ** (-6 / 20), rtol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--copies", "2"], "--copies applies to the noisy copies of --noise-dir"),
    (["--noise-snr", "0,10"], "--noise-snr applies"),
    (["--noise-dir", "NOWHERE"], "--noise-dir NOWHERE: no such folder"),
    (["--noise-dir", "EMPTY"], "holds no audio files"),
    (["--noise-dir", "NOISE", "--noise-snr", "20,0"], "--noise-snr '20,0': expected LO,HI in dB"),
    (["--noise-dir", "NOISE", "--copies", "0"], "--copies 0: must be at least 1"),
    (["--gain", "loud"], "--gain 'loud'"),
])
def test_bad_noise_flags_exit_2(ws, tmp_path, extra, message):
    (tmp_path / "EMPTY").mkdir()
    extra = [str(tmp_path / "EMPTY") if e == "EMPTY" else str(ws / "noise") if e == "NOISE" else e for e in extra]
    r = mb(ws, tmp_path / "out", *extra)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out" / META).exists()


def test_parse_db_range():
    assert parse_db_range("0,20", "--noise-snr") == (0.0, 20.0)
    assert parse_db_range("6", "--gain") == (6.0, 6.0)
    with pytest.raises(ConfigError):
        parse_db_range("1,2,3", "--gain")


def test_annotations_copies_training_windows_only(tmp_path):
    from tests.test_make_batches_annotations import A_SELECTIONS, FEATURES as AFEATURES, _calls
    from tests.annotation_fixtures import write_raven, write_recording

    rec, tables = tmp_path / "rec", tmp_path / "tables"
    write_recording(str(rec / "recA.flac"), 12.0, calls=_calls(A_SELECTIONS), seed=1)
    write_recording(str(rec / "recB.flac"), 12.0, calls=[(1.0, 2.0, 200.0)], seed=2)
    write_raven(str(tables / "recA.Table.1.selections.txt"), A_SELECTIONS)
    write_raven(str(tables / "recB.Table.1.selections.txt"), [(1.0, 2.0, "upcall", 50, 250)])
    (tmp_path / "f.yaml").write_text(AFEATURES)
    noise = tmp_path / "noise"
    write_clip(str(noise / "hum.wav"), (0.2 * np.sin(np.arange(2000 * 5) * 0.3)).astype(np.float32), 2000)

    def run(out, *extra):
        return invoke(["make-batches", str(rec), str(out), "--annotations", str(tables), "--features",
                       str(tmp_path / "f.yaml"), "--window-hop", "1", "--jobs", "1", "--quiet", "--test-fraction",
                       "0.5", *extra])

    r = run(tmp_path / "clean")
    assert r.exit_code == 0, r.output
    r = run(tmp_path / "noisy", "--noise-dir", str(noise), "--noise-snr", "0,0")
    assert r.exit_code == 0, r.output
    meta0, clean = read_set(tmp_path / "clean")
    meta1, noisy = read_set(tmp_path / "noisy")
    train = [n for n, (b, _, _) in clean.items() if in_range(meta0, b, "train_range")]
    test = [n for n, (b, _, _) in clean.items() if in_range(meta0, b, "test_range")]
    assert train and test
    assert sorted(noisy) == sorted(list(clean) + [f"{n}#copy1" for n in train])
    for n in train:
        assert np.array_equal(noisy[n][2], clean[n][2])
        assert noisy[f"{n}#copy1"][1] == clean[n][1]
        assert in_range(meta1, noisy[f"{n}#copy1"][0], "train_range")
        assert not np.allclose(noisy[f"{n}#copy1"][2], clean[n][2])
    for n in test:
        assert in_range(meta1, noisy[n][0], "test_range") and np.array_equal(noisy[n][2], clean[n][2])
    assert meta1["copies"]["copies"] == 1 and meta1["copies"]["noise_snr"] == [0.0, 0.0] and "copies" not in meta0
    # the summary counts the windows and their copies apart, as it does for clips
    assert f" {len(clean)} windows (" in r.output and f"augmented: {len(train)} copies written" in r.output, r.output


def _one_line(r, *words):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convnet: error: "), r.output
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("extra, flag", [
    (["--gain", "1e308,1e308"], "--gain '1e308,1e308'"),
    (["--gain", "1000,1000"], "--gain '1000,1000'"),                        # was blamed on the features
    (["--noise-dir", "NOISE", "--noise-snr=-1e308,1e308"], "--noise-snr '-1e308,1e308'"),
    (["--noise-dir", "NOISE", "--noise-snr", "-100,0"], "--noise-snr '-100,0'"),
])
def test_db_ranges_beyond_60_db_name_the_flag(ws, tmp_path, extra, flag):
    extra = [str(ws / "noise") if e == "NOISE" else e for e in extra]
    _one_line(mb(ws, tmp_path / "out", *extra), flag, "60 dB")
    assert not (tmp_path / "out").exists()
    assert parse_db_range("-60,60", "--gain") == (-60.0, 60.0)


def _noise_dir_with(ws, tmp_path, make):
    noise = tmp_path / "noise"
    import shutil

    shutil.copytree(ws / "noise", noise)
    return noise, make(noise)


def _truncated_flac(noise):
    path = noise / "cut.flac"
    write_clip(str(path), (0.3 * np.random.default_rng(2).standard_normal(SR * 10)).astype(np.float32), SR)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])
    return path


def test_a_truncated_noise_file_is_refused_naming_it(ws, tmp_path):
    noise, bad = _noise_dir_with(ws, tmp_path, _truncated_flac)
    _one_line(mb(ws, tmp_path / "out", "--noise-dir", str(noise), "--copies", "3"), str(bad), "truncated")
    assert not (tmp_path / "out").exists()


def test_a_truncated_noise_file_with_annotations_is_one_line(ws, tmp_path):
    from tests.annotation_fixtures import write_raven, write_recording
    from tests.test_make_batches_annotations import FEATURES as AFEATURES

    noise, bad = _noise_dir_with(ws, tmp_path, _truncated_flac)
    rec, tables = tmp_path / "rec", tmp_path / "tables"
    for stem, seed in (("a", 1), ("b", 2)):
        write_recording(str(rec / f"{stem}.flac"), 8.0, calls=[(1.0, 2.0, 300.0)], seed=seed)
        write_raven(str(tables / f"{stem}.Table.1.selections.txt"), [(1.0, 2.0, "upcall", 200, 400)])
    (tmp_path / "f.yaml").write_text(AFEATURES)
    r = invoke(["make-batches", str(rec), str(tmp_path / "out"), "--annotations", str(tables), "--features",
                str(tmp_path / "f.yaml"), "--jobs", "1", "--quiet", "--noise-dir", str(noise)])
    _one_line(r, str(bad), "truncated")


def test_a_fifo_in_the_noise_dir_is_refused_naming_it(ws, tmp_path):
    import os
    import subprocess
    import sys

    noise, fifo = _noise_dir_with(ws, tmp_path, lambda d: d / "pipe.wav")
    os.mkfifo(fifo)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        p = subprocess.run([sys.executable, "-m", "convnet_cli", "make-batches", str(ws / "audio"),
                            str(tmp_path / "out"), "--features", str(ws / "features.yaml"), "--jobs", "1", "--quiet",
                            "--noise-dir", str(noise)], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=root))
    except subprocess.TimeoutExpired:
        pytest.fail("make-batches hung on a FIFO in --noise-dir")
    assert p.returncode == 2 and str(fifo) in p.stderr and "FIFO" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_copies_whose_features_overflow_name_the_gain(ws, tmp_path, monkeypatch):
    import convnet_cli.ingest.make_batches as mbm
    from convnet_cli.data.skipped_list import parse_skipped

    real = mbm.compute_features

    def poisoned(x, spec, xp):
        out = real(x, spec, xp)
        out[np.abs(x).max(axis=1) > 1.5] = np.inf     # the loud copies only
        return out

    monkeypatch.setattr(mbm, "compute_features", poisoned)
    r = mb(ws, tmp_path / "out", "--gain", "20,20")
    assert r.exit_code == 0, r.output
    listed = parse_skipped((tmp_path / "out" / "skipped.txt").read_text())
    assert listed and all(n.endswith("#copy1") and "noisy copy 1" in why and "--gain" in why for n, why in listed)
