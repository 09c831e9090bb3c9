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
