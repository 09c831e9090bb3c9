"""make-batches end to end on generated audio: shapes, labels, file names, statistics, layouts, splits,
and every kind of bad input (each a clear message; nothing earlier lost or half-written)."""
from __future__ import annotations

import errno
import os
import pickle
import shutil

import numpy as np
import pytest

from convnet_cli.data.skipped_list import parse_skipped
from convnet_cli.data.batch_files import BatchSet, restricted_load
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.ingest.audio import load_clip
from convnet_cli.ingest.features import FeatureSpec, compute_features
from convnet_cli.ingest.make_batches import NothingReadError, make_batches, plan_batches
from tests.audio_fixtures import make_flat_dataset, make_tone_dataset, write_bad_files
from tests.conftest import TINY_FEATURES
from tests.helpers import invoke

SPEC = FeatureSpec.from_dict(TINY_FEATURES, "test")
KEYWORDS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "audio", "keywords")


def run(audio, out, **kw):
    kw.setdefault("features", SPEC)
    kw.setdefault("jobs", 1)
    kw.setdefault("progress", False)
    return make_batches(audio, out, **kw)


def snapshot(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


# ---- the happy path ---------------------------------------------------------------------------------

def test_tiny_batches_read_back(tiny_audio_dir, tiny_batches):
    bs = BatchSet(tiny_batches)
    meta = restricted_load(os.path.join(tiny_batches, "batches.meta"))
    assert bs.label_names == ["high", "low"]
    assert bs.data_shape == (1, 16, 30) and bs.num_vis == 480 and meta["data_shape"] == [1, 16, 30]
    assert bs.batch_numbers == [1, 2] and meta["num_batches"] == 2
    assert meta["train_range"] == [1, 1] and meta["test_range"] == [2, 2]
    assert bs.train_range == [1] and bs.test_range == [2]
    assert meta["features"] == SPEC.to_dict() == bs.features
    assert meta["skipped"] == 0 and open(os.path.join(tiny_batches, "skipped.txt")).read() == "file,reason\n"
    raw = restricted_load(os.path.join(tiny_batches, "data_batch_1"))
    assert raw["data"].dtype == np.float32 and raw["data"].shape == (480, 8)        # one case per column
    assert isinstance(raw["labels"], list) and isinstance(raw["filenames"], list)
    names = []
    for b in (1, 2):
        x, y, fn = bs.load_batch(b)
        assert x.shape == (8, 480) and x.dtype == np.float32 and y.dtype == np.int64
        assert sorted(set(y.tolist())) == [0, 1]                                       # stratified: both classes
        for name, label in zip(fn, y):
            assert name.split("/")[0] == bs.label_names[label]
        names += fn
        # the stored case is the clip's features, (C, H, W) in C order
        j = 3
        clip = load_clip(os.path.join(tiny_audio_dir, fn[j]), SPEC)
        want = compute_features(clip[None], SPEC, np)[0]
        np.testing.assert_array_equal(x[j].reshape(1, 16, 30), want)
    assert sorted(names) == sorted(f"{c}/{c}_{i:03d}.wav" for c in ("low", "high") for i in range(8))
    # statistics over the training range only
    x1 = bs.load_batch(1)[0].astype(np.float64)
    np.testing.assert_allclose(bs.data_mean[:, 0], x1.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bs.data_std[:, 0], x1.std(axis=0), rtol=1e-4, atol=1e-5)
    assert bs.data_mean.shape == bs.data_std.shape == (480, 1) and bs.data_mean.dtype == np.float32
    x2 = bs.load_batch(2)[0]
    assert not np.allclose(bs.data_mean[:, 0], np.concatenate([x1, x2]).mean(axis=0), atol=1e-4)


def test_plan_is_stratified_seeded_and_respects_test_fraction():
    labels = np.repeat(np.arange(3), [40, 30, 30])
    plan = plan_batches(labels, batch_size=10, test_fraction=0.2, seed=5)
    assert len(plan.batches) == 10 and plan.num_train == 8
    assert all(len(b) == 10 for b in plan.batches)
    assert all(set(labels[b]) == {0, 1, 2} for b in plan.batches)
    assert sorted(np.concatenate(plan.batches)) == list(range(100))
    test = np.concatenate(plan.batches[8:])
    assert np.bincount(labels[test]).tolist() == [8, 6, 6]
    again = plan_batches(labels, batch_size=10, test_fraction=0.2, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(plan.batches, again.batches))
    other = plan_batches(labels, batch_size=10, test_fraction=0.2, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(plan.batches, other.batches))
    # ceil(F*K): 0.25 of 5 batches -> 2 test batches; 0 -> none
    assert plan_batches(labels, 20, 0.25, 0).num_train == 3
    assert plan_batches(labels, 20, 0.0, 0).num_train == 5


def test_whale_layout_aiff_and_csv(tmp_path):
    audio = tmp_path / "train"
    truth = make_flat_dataset(str(audio), str(tmp_path / "train.csv"), per_class=6, seed=2)
    s = run(audio, tmp_path / "b", labels_csv=str(tmp_path / "train.csv"), batch_size=4, test_fraction=0.25,
            features=FeatureSpec(sample_rate=2000, duration=2.0, n_fft=256, hop=100, n_mels=16, fmax=1000))
    assert s["read"] == 12 and s["skipped"] == 0 and s["classes"] == 2
    bs = BatchSet(tmp_path / "b")
    assert bs.label_names == ["0", "1"]
    seen = {}
    for b in bs.batch_numbers:
        _, y, fn = bs.load_batch(b)
        seen.update({f: bs.label_names[v] for f, v in zip(fn, y)})
    assert seen == truth


def test_csv_named_columns_and_label_order(tmp_path):
    audio = tmp_path / "clips"
    truth = make_flat_dataset(str(audio), str(tmp_path / "l.csv"), labels=("dog", "bird", "cat"), per_class=3,
                              sr=8000, seconds=0.5, fmt="wav", header=("path", "species"), prefix="c")
    s = run(audio, tmp_path / "b", labels_csv=str(tmp_path / "l.csv"), file_col="path", label_col="species",
            batch_size=9, test_fraction=0, label_names=["dog", "cat", "bird"])
    bs = BatchSet(tmp_path / "b")
    assert bs.label_names == ["dog", "cat", "bird"] and s["test_range"] == [] and bs.test_range == []
    _, y, fn = bs.load_batch(1)
    assert {f: bs.label_names[v] for f, v in zip(fn, y)} == truth


def test_unlabeled_set(tmp_path, tiny_audio_dir):
    s = run(tiny_audio_dir, tmp_path / "b", no_labels=True, batch_size=16, test_fraction=0)
    bs = BatchSet(tmp_path / "b")
    assert bs.label_names == [] and s["classes"] == 0
    x, y, fn = bs.load_batch(1)
    assert (y == -1).all() and len(fn) == 16 and x.shape == (16, 480)


def test_split_by_keeps_groups_on_one_side(tmp_path):
    audio = tmp_path / "a"
    rng = np.random.default_rng(0)
    from tests.audio_fixtures import tone, write_clip
    for c, f in (("a", 400), ("b", 2000)):
        for tape in range(5):
            for k in range(2):
                write_clip(str(audio / c / f"tape{tape}_{c}{k}.wav"), tone(f, 8000, 0.5, rng), 8000)
    run(audio, tmp_path / "b", batch_size=4, test_fraction=0.4, split_by=r"(tape\d+)_", seed=3)
    bs = BatchSet(tmp_path / "b")
    tapes = {}
    for b in bs.batch_numbers:
        for name in bs.load_batch(b)[2]:
            tapes.setdefault(name.split("/")[1].split("_")[0], set()).add("test" if b in bs.test_range else "train")
    assert len(tapes) == 5 and all(len(v) == 1 for v in tapes.values())
    assert {"train", "test"} == set().union(*tapes.values())
    with pytest.raises(ConfigError, match="matches none"):
        run(audio, tmp_path / "c", split_by=r"(reel\d+)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        run(audio, tmp_path / "c", split_by=r"(tape")


@pytest.mark.parametrize("dtype, tol", [("float16", 5e-3), ("uint8", None)])
def test_smaller_dtypes_read_back_close(tmp_path, tiny_audio_dir, tiny_batches, dtype, tol):
    run(tiny_audio_dir, tmp_path / dtype, batch_size=8, test_fraction=0.34, dtype=dtype)
    ref, small = BatchSet(tiny_batches), BatchSet(tmp_path / dtype)
    stored = restricted_load(os.path.join(tmp_path / dtype, "data_batch_1"))["data"]
    assert stored.dtype == np.dtype(dtype)
    for b in (1, 2):
        a, ya, fa = ref.load_batch(b)
        c, yc, fc = small.load_batch(b)
        assert fa == fc and (ya == yc).all() and c.dtype == np.float32
        step = (a.max() - a.min()) / 255 if dtype == "uint8" else 0
        np.testing.assert_allclose(c, a, atol=tol or step / 2 + 1e-5, rtol=tol or 0)
    np.testing.assert_allclose(small.data_mean, ref.data_mean, atol=0.02)


def test_jobs_2_gives_the_same_batches(tmp_path, tiny_audio_dir, tiny_batches):
    s = run(tiny_audio_dir, tmp_path / "b", batch_size=8, test_fraction=0.34, jobs=2)
    assert s["read"] == 16
    a, b = snapshot(tiny_batches), snapshot(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("data_batch"):
            assert a[k] == b[k], k
    np.testing.assert_array_equal(BatchSet(tiny_batches).data_std, BatchSet(tmp_path / "b").data_std)


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.fixture
def audio_with_bad_files(tmp_path):
    audio = tmp_path / "audio"
    make_tone_dataset(audio, per_class=4)
    bad = write_bad_files(str(audio / "low"))
    return audio, bad


def test_bad_audio_is_skipped_and_listed(tmp_path, audio_with_bad_files):
    audio, bad = audio_with_bad_files
    s = run(audio, tmp_path / "b", batch_size=4, test_fraction=0.5)
    assert s["read"] == 8 and s["skipped"] == len(bad) == 6 and s["files"] == 14
    listed = dict(parse_skipped(open(tmp_path / "b" / "skipped.txt", newline="").read()))
    assert set(listed) == {f"low/{n}" for n in bad}
    for name, words in bad.items():
        assert words in listed[f"low/{name}"].lower()
    bs = BatchSet(tmp_path / "b")
    # batches are planned before decoding (14 files -> 4 batches); skipped files leave them smaller
    assert bs.meta["skipped"] == 6 and sum(bs.meta["batch_cases"]) == 8 and len(bs.meta["batch_cases"]) == 4
    assert sum(len(bs.load_batch(b)[1]) for b in bs.batch_numbers) == 8


def test_cli_summary_line_and_skipped(tmp_path, audio_with_bad_files):
    audio, _ = audio_with_bad_files
    feats = tmp_path / "f.yaml"
    feats.write_text("features:\n  sample_rate: 8000\n  duration: 0.5\n  n_fft: 256\n  hop: 64\n  n_mels: 16\n")
    r = invoke(["make-batches", str(audio), str(tmp_path / "b"), "--features", str(feats), "--hop", "128",
                "--batch-size", "4", "--test-fraction", "0.5", "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("make-batches: 8 files read, 6 skipped, 2 classes, 4 batches")
    assert "case shape 1x16x30" in last and "skipped.txt" in last
    assert BatchSet(tmp_path / "b").features["hop"] == 128                    # the flag overrode the file


def test_nothing_readable_exits_1_and_writes_nothing(tmp_path):
    audio = tmp_path / "audio"
    write_bad_files(str(audio / "a"))
    with pytest.raises(NothingReadError) as e:
        run(audio, tmp_path / "b")
    assert e.value.exit_code == 1 and "none of the 6 audio files could be read" in str(e.value)
    assert not (tmp_path / "b").exists()
    r = invoke(["make-batches", str(audio), str(tmp_path / "b"), "--quiet", "--jobs", "1"])
    assert r.exit_code == 1 and "could be read" in r.output and "Traceback" not in r.output


def test_folder_without_audio(tmp_path):
    (tmp_path / "audio" / "sub").mkdir(parents=True)
    (tmp_path / "audio" / "sub" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no audio files"):
        run(tmp_path / "audio", tmp_path / "b")
    r = invoke(["make-batches", str(tmp_path / "audio"), str(tmp_path / "b"), "--quiet"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "no audio files" in r.output
    with pytest.raises(DataError, match="no such folder"):
        run(tmp_path / "missing", tmp_path / "b")


def test_flat_folder_without_csv_and_split_folders(tmp_path, tiny_audio_dir):
    flat = tmp_path / "flat"
    make_flat_dataset(str(flat), str(tmp_path / "x.csv"), per_class=1, sr=8000, seconds=0.5, fmt="wav")
    with pytest.raises(ConfigError, match="--labels FILE.csv"):
        run(flat, tmp_path / "b")
    shutil.copytree(tiny_audio_dir, tmp_path / "ds" / "train")
    with pytest.raises(ConfigError, match="look like splits"):
        run(tmp_path / "ds", tmp_path / "b")


@pytest.mark.parametrize("csv_text, words", [
    ("name,label\ntrain1.aiff,0\n", ["no file name column", "--file-col"]),
    ("clip_name,target\ntrain1.aiff,0\n", ["no label column", "--label-col"]),
    ("clip_name,label\ntrain1.aiff,0\nnope.aiff,1\nnope2.aiff,1\n", ["2 of 3 files", "line 3, 'nope.aiff'"]),
    ("clip_name,label\ntrain1.aiff,\n", ["line 2", "empty label"]),
    ("clip_name,label\ntrain1.aiff,0\ntrain1.aiff,1\n", ["line 3", "first on line 2"]),
    ("", ["empty", "header"]),
    ("clip_name,label\ntrain1.aiff\n", ["line 2", "1 field"]),
])
def test_bad_csv(tmp_path, csv_text, words):
    audio = tmp_path / "train"
    make_flat_dataset(str(audio), str(tmp_path / "ok.csv"), per_class=1)
    (tmp_path / "bad.csv").write_text(csv_text)
    with pytest.raises(DataError) as e:
        run(audio, tmp_path / "b", labels_csv=str(tmp_path / "bad.csv"))
    for w in words:
        assert w in str(e.value), str(e.value)
    assert str(e.value).startswith(str(tmp_path / "bad.csv"))
    assert not (tmp_path / "b").exists()


def test_named_column_missing_suggests(tmp_path):
    audio = tmp_path / "train"
    make_flat_dataset(str(audio), str(tmp_path / "l.csv"), per_class=1)
    with pytest.raises(DataError, match=r"no column 'clipname' .*did you mean 'clip_name'"):
        run(audio, tmp_path / "b", labels_csv=str(tmp_path / "l.csv"), file_col="clipname")


def test_unknown_label_names(tmp_path, tiny_audio_dir):
    with pytest.raises(DataError, match="label 'low' is not one of the label names .high, medium."):
        run(tiny_audio_dir, tmp_path / "b", label_names=["high", "medium"])
    audio = tmp_path / "train"
    make_flat_dataset(str(audio), str(tmp_path / "l.csv"), labels=("yes", "no"), per_class=1)
    with pytest.raises(DataError, match=r"l.csv line 3: label 'no' is not one of the label names \(yes, noise\)"):
        run(audio, tmp_path / "b", labels_csv=str(tmp_path / "l.csv"), label_names=["yes", "noise"])


def test_existing_batch_dir_is_refused_then_overwritten(tmp_path, tiny_audio_dir, tiny_batches):
    out = tmp_path / "b"
    shutil.copytree(tiny_batches, out)
    (out / "data_batch_9").write_bytes(b"stale")
    (out / "README.md").write_text("mine")
    before = snapshot(out)
    with pytest.raises(DataError, match="already holds batch files .*--overwrite"):
        run(tiny_audio_dir, out)
    r = invoke(["make-batches", str(tiny_audio_dir), str(out), "--quiet"])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert snapshot(out) == before
    s = run(tiny_audio_dir, out, overwrite=True, batch_size=4, test_fraction=0.25)
    assert s["batches"] == 4
    files = set(os.listdir(out))
    assert files == {"batches.meta", "skipped.txt", "README.md"} | {f"data_batch_{i}" for i in range(1, 5)}
    assert BatchSet(out).batch_numbers == [1, 2, 3, 4]


def test_disk_full_keeps_the_old_set(tmp_path, tiny_audio_dir, tiny_batches, monkeypatch):
    import convnet_cli.data.batch_files as bf

    out = tmp_path / "b"
    shutil.copytree(tiny_batches, out)
    before = snapshot(out)
    calls = []
    real_dump = pickle.dump

    def dump(obj, f, protocol=None):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"\x80\x05partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_dump(obj, f, protocol=protocol)

    monkeypatch.setattr(bf.pickle, "dump", dump)
    with pytest.raises(DataError) as e:
        run(tiny_audio_dir, out, overwrite=True, batch_size=4, test_fraction=0.25)
    assert "disk full" in str(e.value) and "data_batch_2" in str(e.value)
    assert snapshot(out) == before                     # old files intact, no temp or staging files left
    calls.clear()
    r = invoke(["make-batches", str(tiny_audio_dir), str(tmp_path / "new"), "--quiet", "--jobs", "1"])
    assert r.exit_code == 2 and "disk full" in r.output
    assert not (tmp_path / "new").exists()


def test_bad_options(tmp_path, tiny_audio_dir):
    for kw, words in ((dict(batch_size=0), "--batch-size"), (dict(test_fraction=1.0), "--test-fraction"),
                      (dict(dtype="int8"), "--dtype"), (dict(jobs=0), "--jobs")):
        with pytest.raises(ConfigError, match=words):
            run(tiny_audio_dir, tmp_path / "b", **kw)
    r = invoke(["make-batches", str(tiny_audio_dir), str(tmp_path / "b"), "--nmels", "3"])
    assert r.exit_code == 2
    feats = tmp_path / "f.yaml"
    feats.write_text("sample_rate: 8000\nn_mel: 16\n")
    r = invoke(["make-batches", str(tiny_audio_dir), str(tmp_path / "b"), "--features", str(feats)])
    assert r.exit_code == 2 and "f.yaml: unknown features key 'n_mel' (did you mean 'n_mels'?) (line 2)" in r.output
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(not os.path.isdir(KEYWORDS), reason="../shared/audio/keywords is not here (a user's clone)")
def test_keywords_set(tmp_path):
    s = make_batches(os.path.join(KEYWORDS, "train"), tmp_path / "kw", features=FeatureSpec(duration=1.0),
                     batch_size=200, jobs=1, progress=False)
    assert s["read"] == 1600 and s["skipped"] == 0 and s["classes"] == 10
    bs = BatchSet(tmp_path / "kw")
    assert bs.data_shape == (1, 64, 97) and bs.train_range == list(range(1, 7)) and bs.test_range == [7, 8]
    x, y, fn = bs.load_batch(7)
    assert x.shape == (200, 64 * 97) and np.bincount(y).tolist() == [20] * 10
    assert all(f.split("/")[0] == bs.label_names[v] for f, v in zip(fn, y))
    assert np.isfinite(bs.data_std).all() and bs.data_std.min() > 0


def test_features_for_files_match_the_batches(tiny_audio_dir, tiny_batches, tmp_path):
    from convnet_cli.ingest.make_batches import features_for_files

    bs = BatchSet(tiny_batches)
    x, _, names = bs.load_batch(2)
    shutil.copy(os.path.join(tiny_audio_dir, names[0]), tmp_path / "copy.wav")
    (tmp_path / "bad.wav").write_text("not audio")
    paths = [str(tiny_audio_dir / n) for n in names] + [str(tmp_path / "bad.wav")]
    for jobs in (1, 2):
        feats, ok, skipped = features_for_files(paths, SPEC, jobs=jobs)
        assert feats.shape == (8, 1, 16, 30) and feats.dtype == np.float32
        assert ok == paths[:8] and skipped[0][0] == paths[8] and "format not recognised" in skipped[0][1]
        np.testing.assert_array_equal(feats.reshape(8, -1), x)          # exactly as at training time
    empty, ok, skipped = features_for_files([str(tmp_path / "bad.wav")], SPEC)
    assert empty.shape == (0, 1, 16, 30) and ok == [] and len(skipped) == 1


def test_interrupt_leaves_nothing_behind(tmp_path, tiny_audio_dir, monkeypatch):
    import convnet_cli.data.writer as writer

    real = writer.encode_batch
    calls = []

    def encode(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(writer, "encode_batch", encode)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("keep me")
    with pytest.raises(KeyboardInterrupt):
        run(tiny_audio_dir, tmp_path / "b", batch_size=4)
    assert os.listdir(tmp_path / "b") == ["notes.txt"]


@pytest.mark.parametrize("normalize", ["pixel", "band", "global"])
def test_normalize_pools_the_statistics_by_value_band_or_all(tiny_audio_dir, tmp_path, normalize):
    """features `normalize` (docs/CONFIG.md): batches.meta's data_mean/data_std hold, for every value of a case,
    the statistics of that value (pixel), of its frequency row over time (band) or of every value (global),
    taken over the training cases; so the normalised training data have mean 0 and std 1 per value, per row or
    over all."""
    from convnet_cli.data.batch_files import BatchSet
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.make_batches import make_batches
    from tests.conftest import TINY_FEATURES

    out = tmp_path / "b"
    make_batches(tiny_audio_dir, out, features=FeatureSpec.from_dict(dict(TINY_FEATURES, normalize=normalize), "t"),
                 batch_size=8, test_fraction=0.34, seed=0, jobs=1, progress=False)
    bs = BatchSet(str(out))
    c, h, w = bs.data_shape
    x = np.concatenate([bs.read_raw(i)[0] for i in bs.train_range])
    x = x.astype(np.float64).reshape(-1, c * h, w)
    mean = np.asarray(bs.data_mean, np.float64).reshape(c * h, w)
    std = np.asarray(bs.data_std, np.float64).reshape(c * h, w)
    if normalize == "pixel":
        want_m, want_s = x.mean(axis=0), x.std(axis=0)
    elif normalize == "band":
        want_m = np.broadcast_to(x.mean(axis=(0, 2))[:, None], (c * h, w))
        want_s = np.broadcast_to(x.std(axis=(0, 2))[:, None], (c * h, w))
    else:
        want_m, want_s = np.full((c * h, w), x.mean()), np.full((c * h, w), x.std())
    np.testing.assert_allclose(mean, want_m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, want_s, rtol=1e-4, atol=1e-5)
    z = (x - mean) / std
    axes = {"pixel": 0, "band": (0, 2), "global": None}[normalize]
    np.testing.assert_allclose(z.mean(axis=axes), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=axes), 1, atol=1e-4)
