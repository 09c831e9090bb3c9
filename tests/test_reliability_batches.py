"""Regression tests for issue 13, make-batches side: an --overwrite killed at any step leaves the old set or
the new one, never a mix; one writer per folder; per-file refusals (absurd sample rate, absurd samples, names
outside AUDIO_DIR) are skipped with a reason; skipped.txt is CSV; sizes far too large name the key or file."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from convnet_cli.data.batch_files import BatchSet, restricted_load
from convnet_cli.data.batch_set_swap import BatchDirLock, recover
from convnet_cli.data.skipped_list import parse_skipped
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.ingest.features import FeatureSpec
from convnet_cli.ingest.make_batches import make_batches
from tests.audio_fixtures import make_flat_dataset, make_tone_dataset
from tests.conftest import TINY_FEATURES
from tests.helpers import invoke

SPEC = FeatureSpec.from_dict(TINY_FEATURES, "test")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(audio, out, **kw):
    kw.setdefault("features", SPEC)
    kw.setdefault("jobs", 1)
    kw.setdefault("progress", False)
    return make_batches(audio, out, **kw)


def read_set(folder):
    """Everything a reader sees of the set: meta essentials and every batch's names, labels and data."""
    bs = BatchSet(folder)
    out = {"labels": bs.label_names, "train": bs.train_range, "test": bs.test_range, "shape": bs.data_shape,
           "mean": bs.data_mean.tobytes()}
    for i in bs.train_range + bs.test_range:
        x, y, names = bs.load_batch(i)
        out[i] = (tuple(names), y.tobytes(), x.tobytes())
    return out


_KILL = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import convnet_cli.data.batch_set_swap as sw
    k, n = {k}, [0]
    real_replace, real_remove = sw._replace, sw._remove
    def step():
        n[0] += 1
        if n[0] == k:
            os._exit(9)          # kill -9 between two steps of the swap
    def replace(a, b):
        step(); real_replace(a, b)
    def remove(p):
        step(); real_remove(p)
    sw._replace, sw._remove = replace, remove
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.make_batches import make_batches
    make_batches({audio!r}, {out!r}, features=FeatureSpec.from_dict({feats!r}), batch_size=4, seed=1,
                 test_fraction=0.25, jobs=1, progress=False, overwrite=True)
    print("steps", n[0])
""")


def test_overwrite_killed_at_every_step_leaves_old_or_new_set(tmp_path, tiny_audio_dir):
    new_audio = tmp_path / "new_audio"
    make_tone_dataset(new_audio, classes=("low", "high"), per_class=8, sr=8000, seconds=0.5, seed=7)
    old_ref, new_ref = tmp_path / "old_ref", tmp_path / "new_ref"
    run(tiny_audio_dir, old_ref, batch_size=2, test_fraction=0.25)          # 8 batches
    run(new_audio, new_ref, batch_size=4, seed=1, test_fraction=0.25)       # 4 batches: 4 old ones must go
    old, new = read_set(old_ref), read_set(new_ref)
    assert old != new
    outcomes = []
    k = 1
    while True:
        out = tmp_path / f"out{k}"
        shutil.copytree(old_ref, out)
        code = _KILL.format(root=ROOT, k=k, audio=str(new_audio), out=str(out), feats=TINY_FEATURES)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        finished = p.returncode == 0
        assert finished or p.returncode == 9, p.stderr
        seen = read_set(out)                     # a reader, right after the kill
        assert seen in (old, new), f"kill at step {k}: a mixed set"
        outcomes.append(seen == new)
        with BatchDirLock(out):                 # what the next make-batches does first
            recover(out)
        assert read_set(out) == seen
        hidden = [n for n in os.listdir(out) if n.startswith(".")]
        assert hidden == [], hidden
        if finished:
            break
        k += 1
    assert k >= 10 and not outcomes[0] and outcomes[-1]   # the swap has steps, and each side was seen


def test_a_second_make_batches_into_a_locked_folder_fails(tmp_path, tiny_audio_dir):
    out = tmp_path / "b"
    out.mkdir()
    with BatchDirLock(out):
        r = invoke(["make-batches", str(tiny_audio_dir), str(out), "--jobs", "1", "--quiet", "--sample-rate", "8000",
                    "--duration", "0.5", "--n-fft", "256", "--hop", "128", "--n-mels", "16"])
        assert r.exit_code == 2, r.output
        assert "another convnet make-batches" in r.output and str(out) in r.output
        assert "Traceback" not in r.output
    assert not os.path.exists(out / "batches.meta")
    run(tiny_audio_dir, out)                    # the lock is gone with its holder
    assert os.listdir(out) and not os.path.exists(out / ".make-batches.lock")


def _absurd_rate_wav(path):
    sf.write(path, np.zeros(4000, np.float32), 8000, subtype="PCM_16")
    b = bytearray(open(path, "rb").read())
    b[24:28] = struct.pack("<I", 2147483647)
    open(path, "wb").write(bytes(b))


def test_absurd_rate_and_samples_are_skipped_with_reasons(tmp_path):
    audio = tmp_path / "audio"
    make_tone_dataset(audio, per_class=3)
    _absurd_rate_wav(audio / "low" / "rate.wav")
    sf.write(audio / "high" / "loud.wav", np.full(4000, 1e30, np.float32), 8000, subtype="FLOAT")
    s = run(audio, tmp_path / "b", test_fraction=0)
    assert s["read"] == 6 and s["skipped"] == 2
    listed = dict(parse_skipped((tmp_path / "b" / "skipped.txt").read_text()))
    assert "sample rate 2147483647" in listed["low/rate.wav"]
    assert "samples reach 1e+30" in listed["high/loud.wav"]
    meta = restricted_load(str(tmp_path / "b" / "batches.meta"))
    assert np.isfinite(meta["data_mean"]).all() and np.isfinite(meta["data_std"]).all()


def test_nonfinite_features_never_reach_a_batch(tmp_path, monkeypatch):
    import convnet_cli.ingest.make_batches as mb

    real = mb.compute_features

    def poisoned(x, spec, xp):
        out = real(x, spec, xp)
        out[0, 0, 0, 0] = np.inf      # the first clip of every chunk
        return out

    monkeypatch.setattr(mb, "compute_features", poisoned)
    audio = tmp_path / "audio"
    make_tone_dataset(audio, per_class=3)
    s = run(audio, tmp_path / "b", test_fraction=0)
    assert s["skipped"] == 1 and s["read"] == 5
    bs = BatchSet(tmp_path / "b")
    assert all(np.isfinite(bs.load_batch(i)[0]).all() for i in bs.batch_numbers)
    assert "overflow" in (tmp_path / "b" / "skipped.txt").read_text()


def test_csv_names_outside_audio_dir_are_skipped(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    csv_path = tmp_path / "labels.csv"
    make_flat_dataset(audio, csv_path, per_class=3, sr=8000, seconds=0.5)
    sf.write(tmp_path / "secret.wav", np.zeros(4000, np.float32), 8000)
    with open(csv_path, "a") as f:
        f.write("../secret.wav,0\n/etc/hostname,1\n")
    s = run(audio, tmp_path / "b", labels_csv=str(csv_path), test_fraction=0)
    assert s["read"] == 6 and s["skipped"] == 2
    listed = dict(parse_skipped((tmp_path / "b" / "skipped.txt").read_text()))
    assert set(listed) == {"../secret.wav", "/etc/hostname"}
    assert all("outside AUDIO_DIR" in r for r in listed.values())
    names = {n for i in BatchSet(tmp_path / "b").batch_numbers for n in BatchSet(tmp_path / "b").load_batch(i)[2]}
    assert not any("secret" in n or "hostname" in n for n in names)


def test_skipped_txt_is_csv_and_keeps_odd_names_whole(tmp_path):
    audio = tmp_path / "audio"
    make_tone_dataset(audio, per_class=3)
    odd = "bad\nname, \"quoted\".wav"
    open(audio / "low" / odd, "wb").close()       # an empty file: skipped
    run(audio, tmp_path / "b", test_fraction=0)
    text = (tmp_path / "b" / "skipped.txt").read_text()
    assert text.startswith("file,reason\n")
    assert parse_skipped(text) == [(f"low/{odd}", "empty file (0 bytes)")]
    r = invoke(["info", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    import json

    info = json.loads(r.output)
    assert info["skipped"]["listed"] == 1 and info["skipped"]["examples"][0]["file"] == f"low/{odd}"


def test_old_tab_separated_skipped_txt_still_reads():
    assert parse_skipped("a.wav\tempty file\nb.wav\tcannot decode\n") == [("a.wav", "empty file"),
                                                                           ("b.wav", "cannot decode")]


def test_huge_duration_names_the_key():
    with pytest.raises(ConfigError, match=r"features.yaml: duration 100000 s .* per clip"):
        FeatureSpec.from_dict({"duration": 100000}, "features.yaml")


def test_pickle_claiming_petabytes_names_the_file(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"c__builtin__\nbytearray\n(L1125899906842624L\ntR.")   # bytearray(2**50)
    with pytest.raises(DataError, match="data_batch_1: reading it needs more memory"):
        restricted_load(str(path))


def test_a_recording_with_absurd_samples_is_skipped(tmp_path):
    from tests.annotation_fixtures import write_raven, write_recording
    from tests.test_make_batches_annotations import FEATURES

    root = tmp_path / "s"
    (root / "rec").mkdir(parents=True)
    write_recording(str(root / "rec" / "good.flac"), 6.0, seed=5)
    sf.write(root / "rec" / "loud.wav", np.full(6 * 2000, 1e30, np.float32), 2000, subtype="FLOAT")
    (root / "features.yaml").write_text(FEATURES)
    for stem in ("good", "loud"):
        write_raven(str(root / "tables" / f"{stem}.Table.1.selections.txt"), [(1.0, 2.0, "upcall", 0, 1)])
    r = invoke(["make-batches", str(root / "rec"), str(tmp_path / "b"), "--annotations", str(root / "tables"),
                "--features", str(root / "features.yaml"), "--jobs", "1", "--quiet", "--test-fraction", "0"])
    assert r.exit_code == 0, r.output
    skipped = dict(parse_skipped((tmp_path / "b" / "skipped.txt").read_text()))
    assert "samples reach 1e+30" in skipped["loud.wav"]
    bs = BatchSet(tmp_path / "b")
    assert np.isfinite(bs.data_mean).all() and all(np.isfinite(bs.load_batch(i)[0]).all() for i in bs.batch_numbers)


# ---- issue 23: the batch set's swap and lock never follow a name out of BATCH_DIR; a killed install is
# finished before the refusal; FIFOs, devices and every soundfile format among the clips; estimates -----------

def _tiny_cli(audio, out, *extra):
    return invoke(["make-batches", str(audio), str(out), "--jobs", "1", "--quiet", "--sample-rate", "8000",
                   "--duration", "0.5", "--n-fft", "256", "--hop", "128", "--n-mels", "16", *extra])


def _one_line(r, *words):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convnet: error: "), r.output
    for w in words:
        assert w in lines[0], (w, lines[0])


def _cli_subprocess(args, timeout=120):
    """The CLI in its own process, for input that could hang it (a FIFO): a hang fails the test."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        return subprocess.run([sys.executable, "-m", "convnet_cli", *args], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"convnet {' '.join(args[:1])} hung (killed after {timeout} s)")


def _files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.parametrize("planted", ["dotdot_name", "staging_symlink"])
def test_a_planted_swap_never_moves_a_file_from_or_to_outside_batch_dir(tmp_path, tiny_audio_dir, tiny_batches,
                                                                         planted):
    import json

    from convnet_cli.data.batch_set_swap import pending_swap

    out = tmp_path / "a" / "b" / "out"
    shutil.copytree(tiny_batches, out)
    (tmp_path / "a" / "b" / "x").write_text("the user's file")          # what staging/../../x names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data_batch_1").write_text("another user's file")
    if planted == "dotdot_name":
        (out / ".make-batches-abc").mkdir()
        rec = {"staging": ".make-batches-abc", "files": ["../../x", "batches.meta"]}
    else:
        os.symlink(elsewhere, out / ".make-batches-abc")
        rec = {"staging": ".make-batches-abc", "files": ["data_batch_1", "batches.meta"]}
    (out / ".make-batches.swap").write_text(json.dumps(rec))
    before = _files_under(tmp_path)
    seen = pending_swap(out) or {}
    root = os.path.realpath(out)
    assert all(os.path.realpath(p).startswith(root + os.sep) and ".." not in os.path.relpath(p, out)
               for p in seen.values()), seen
    assert read_set(out) == read_set(tiny_batches)          # a reader ignores the planted record
    r = _tiny_cli(tiny_audio_dir, out, "--overwrite")
    _one_line(r, str(out / ".make-batches.swap"), "remove it")
    assert _files_under(tmp_path) == before
    assert (tmp_path / "a" / "b" / "x").read_text() == "the user's file"
    assert (elsewhere / "data_batch_1").read_text() == "another user's file"


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_planted_lock_link_is_refused_and_its_target_kept(tmp_path, tiny_audio_dir, link):
    out = tmp_path / "b"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (os.symlink if link == "symlink" else os.link)(target, out / ".make-batches.lock")
    r = _tiny_cli(tiny_audio_dir, out)
    _one_line(r, str(out / ".make-batches.lock"), "remove it")
    assert target.read_text() == "keep me"
    assert not (out / "batches.meta").exists()


def test_a_fifo_lock_and_a_folder_swap_are_one_line_naming_the_path(tmp_path, tiny_audio_dir):
    out = tmp_path / "b"
    out.mkdir()
    os.mkfifo(out / ".make-batches.lock")
    _one_line(_tiny_cli(tiny_audio_dir, out), str(out / ".make-batches.lock"), "FIFO", "remove it")
    os.remove(out / ".make-batches.lock")
    (out / ".make-batches.swap").mkdir()
    _one_line(_tiny_cli(tiny_audio_dir, out), str(out / ".make-batches.swap"), "folder", "remove it")
    assert os.listdir(out) == [".make-batches.swap"]
    os.rmdir(out / ".make-batches.swap")
    (out / ".make-batches.swap.tmp").mkdir()
    _one_line(_tiny_cli(tiny_audio_dir, out), str(out / ".make-batches.swap.tmp"), "folder", "remove it")


_KILL_FRESH = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import convnet_cli.data.batch_set_swap as sw
    n, real = [0], sw._replace
    def replace(a, b):
        n[0] += 1
        if n[0] == {k}:
            os._exit(9)
        real(a, b)
    sw._replace = replace
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.make_batches import make_batches
    make_batches({audio!r}, {out!r}, features=FeatureSpec.from_dict({feats!r}), batch_size=4, seed=1,
                 test_fraction=0.25, jobs=1, progress=False)
""")


def test_a_kill_during_the_install_is_finished_before_the_refusal(tmp_path, tiny_audio_dir):
    ref, out = tmp_path / "ref", tmp_path / "out"
    run(tiny_audio_dir, ref, batch_size=4, seed=1, test_fraction=0.25)
    code = _KILL_FRESH.format(root=ROOT, k=3, audio=str(tiny_audio_dir), out=str(out), feats=TINY_FEATURES)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 9, p.stderr
    assert (out / ".make-batches.swap").exists()          # killed half way through the moves
    r = _tiny_cli(tiny_audio_dir, out)                     # no --overwrite
    _one_line(r, str(out), "completed", "--overwrite")
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == []
    assert read_set(out) == read_set(ref)


def test_ctrl_c_during_the_moves_keeps_the_committed_set(tmp_path, tiny_audio_dir, tiny_batches, monkeypatch):
    import convnet_cli.data.batch_set_swap as sw

    new_audio = tmp_path / "new_audio"
    make_tone_dataset(new_audio, classes=("low", "high"), per_class=8, sr=8000, seconds=0.5, seed=7)
    ref, out = tmp_path / "ref", tmp_path / "out"
    run(new_audio, ref, batch_size=4, seed=1, test_fraction=0.25)
    shutil.copytree(tiny_batches, out)
    n, real = [0], sw._replace

    def replace(a, b):
        n[0] += 1
        if n[0] == 3:
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(sw, "_replace", replace)
    with pytest.raises(KeyboardInterrupt):
        run(new_audio, out, batch_size=4, seed=1, test_fraction=0.25, overwrite=True)
    monkeypatch.setattr(sw, "_replace", real)
    assert read_set(out) == read_set(ref)                  # committed: readers see the whole new set
    with BatchDirLock(out):
        recover(out)
    assert read_set(out) == read_set(ref) and not [n for n in os.listdir(out) if n.startswith(".")]


def _mp3(path, seconds=0.5, sr=8000, seed=0):
    from tests.audio_fixtures import tone

    sf.write(path, tone(300.0, sr, seconds, np.random.default_rng(seed)), sr, format="MP3")


def test_every_format_soundfile_reads_is_read_and_the_rest_listed(tmp_path):
    audio = tmp_path / "audio"
    make_tone_dataset(audio, per_class=3)
    _mp3(audio / "low" / "extra.mp3")
    (audio / "high" / "phone.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + bytes(200))
    (audio / "high" / "notes.txt").write_text("field notes")
    (audio / "high" / "README").write_text("about the clips")
    os.mkfifo(audio / "high" / "pipe.wav")
    r = _tiny_cli(audio, tmp_path / "b", "--test-fraction", "0")
    assert r.exit_code == 0, r.output
    assert "7 files read, 2 skipped" in r.output and "2 non-audio files ignored" in r.output
    listed = dict(parse_skipped((tmp_path / "b" / "skipped.txt").read_text()))
    assert set(listed) == {"high/phone.m4a", "high/pipe.wav"}, listed
    assert ".m4a" in listed["high/phone.m4a"] and "convert" in listed["high/phone.m4a"]
    assert "not a regular file" in listed["high/pipe.wav"] and "FIFO" in listed["high/pipe.wav"]
    bs = BatchSet(tmp_path / "b")
    names = {n for i in bs.batch_numbers for n in bs.load_batch(i)[2]}
    assert "low/extra.mp3" in names


def test_a_fifo_named_in_the_labels_csv_is_skipped(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    csv_path = tmp_path / "labels.csv"
    make_flat_dataset(audio, csv_path, per_class=3, sr=8000, seconds=0.5)
    os.mkfifo(audio / "pipe.aiff")
    with open(csv_path, "a") as f:
        f.write("pipe.aiff,0\n")
    s = run(audio, tmp_path / "b", labels_csv=str(csv_path), test_fraction=0)
    assert s["read"] == 6 and s["skipped"] == 1
    listed = dict(parse_skipped((tmp_path / "b" / "skipped.txt").read_text()))
    assert "not a regular file" in listed["pipe.aiff"]


def test_recordings_in_mp3_are_read_and_a_fifo_recording_is_listed(tmp_path):
    from tests.annotation_fixtures import write_raven, write_recording
    from tests.test_make_batches_annotations import FEATURES

    root = tmp_path / "s"
    write_recording(str(root / "rec" / "a.flac"), 8.0, calls=[(1.0, 2.0, 500)], seed=1)
    write_recording(str(root / "rec" / "b.mp3"), 8.0, sr=8000, calls=[(3.0, 4.0, 500)], seed=2)  # MP3: 8 kHz up
    os.mkfifo(root / "rec" / "c.wav")
    for stem, (b, e) in (("a", (1.0, 2.0)), ("b", (3.0, 4.0)), ("c", (1.0, 2.0))):
        write_raven(str(root / "tables" / f"{stem}.Table.1.selections.txt"), [(b, e, "upcall", 300, 700)])
    (root / "features.yaml").write_text(FEATURES)
    p = _cli_subprocess(["make-batches", str(root / "rec"), str(tmp_path / "b"), "--annotations",
                         str(root / "tables"), "--features", str(root / "features.yaml"), "--jobs", "1", "--quiet",
                         "--test-fraction", "0"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 recordings read" in p.stdout and "1 skipped" in p.stdout
    skipped = dict(parse_skipped((tmp_path / "b" / "skipped.txt").read_text()))
    assert set(skipped) == {"c.wav"} and "FIFO" in skipped["c.wav"]
    bs = BatchSet(tmp_path / "b")
    names = [n for i in bs.batch_numbers for n in bs.load_batch(i)[2]]
    assert any(n.startswith("b.mp3@") for n in names)


def test_more_jobs_than_a_machine_can_run_is_refused(tmp_path, tiny_audio_dir):
    _one_line(_tiny_cli(tiny_audio_dir, tmp_path / "b", "--jobs", "10000"), "--jobs 10000")
    assert not (tmp_path / "b").exists()


def _small_disk(monkeypatch, free):
    real = shutil.disk_usage

    def usage(path):
        u = real(path)
        return type(u)(u.total, u.total - free, free)

    monkeypatch.setattr(shutil, "disk_usage", usage)


def test_copies_that_cannot_fit_on_the_disk_are_refused(tmp_path, tiny_audio_dir, monkeypatch):
    _small_disk(monkeypatch, 200_000)
    r = _tiny_cli(tiny_audio_dir, tmp_path / "b", "--gain", "-3,3", "--copies", "300")
    _one_line(r, "--copies 300", "free")
    assert not (tmp_path / "b").exists()
    assert _tiny_cli(tiny_audio_dir, tmp_path / "b", "--gain", "-3,3", "--copies", "2").exit_code == 0


def _recordings(root):
    from tests.annotation_fixtures import write_raven, write_recording
    from tests.test_make_batches_annotations import FEATURES

    for stem, seed in (("a", 1), ("b", 2)):
        write_recording(str(root / "rec" / f"{stem}.flac"), 20.0, calls=[(2.0, 3.0, 500), (8.0, 9.0, 500)],
                        seed=seed)
        write_raven(str(root / "tables" / f"{stem}.Table.1.selections.txt"),
                    [(2.0, 3.0, "tone", 300, 700), (8.0, 9.0, "tone", 300, 700)])
    (root / "features.yaml").write_text(FEATURES)
    return ["make-batches", str(root / "rec"), str(root / "out"), "--annotations", str(root / "tables"),
            "--features", str(root / "features.yaml"), "--jobs", "1", "--quiet"]


def test_a_window_hop_below_one_sample_is_refused(tmp_path):
    args = _recordings(tmp_path)
    p = _cli_subprocess(args + ["--window-hop", "1e-5"])
    assert p.returncode == 2 and "--window-hop 1e-05" in p.stderr and "sample" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_windows_that_cannot_fit_on_the_disk_are_refused(tmp_path, monkeypatch):
    args = _recordings(tmp_path)
    _small_disk(monkeypatch, 100_000)
    _one_line(invoke(args + ["--window-hop", "0.01"]), "--window-hop 0.01", "free")
    assert not (tmp_path / "out").exists()


def test_a_background_label_that_leaves_one_class_is_refused(tmp_path):
    args = _recordings(tmp_path)
    _one_line(invoke(args + ["--background", "tone"]), "--background tone", "one class")
    assert not (tmp_path / "out").exists()
    assert invoke(args).exit_code == 0
