"""convnet detect end to end on generated recordings with a hand-made tone detector (tests/detect_fixtures.py)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from convnet_cli.data.skipped_list import parse_skipped
from tests.detect_fixtures import many_recordings, tone_checkpoint, write_recording
from tests.helpers import invoke

TONES_A = [(10.0, 12.0), (30.0, 31.5), (45.0, 48.0)]
TONES_B = [(5.0, 7.0)]


@pytest.fixture
def setup(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    rec = tmp_path / "rec"
    (rec / "site1").mkdir(parents=True)
    write_recording(rec / "site1" / "a.wav", 60, TONES_A)                 # 2 kHz: resampled to 1 kHz
    write_recording(rec / "b.flac", 20, TONES_B, sr=1000, seed=3)
    return ck, rec, tmp_path / "out"


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _no_temp_files(folder):
    return [n for r, _, fs in os.walk(folder) for n in fs if n.endswith(".tmp")] == []


def test_tones_at_known_times_come_out_as_detections(setup):
    ck, rec, out = setup
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet", "--combined", "--scores"])
    assert r.exit_code == 0, r.output
    rows = _rows(out / "detections.csv")
    got = {(d["filename"], float(d["begin_s"]), float(d["end_s"])) for d in rows}
    assert {d["class"] for d in rows} == {"tone"}  # 'noise' is a background class: never reported
    for name, tones in (("site1/a.wav", TONES_A), ("b.flac", TONES_B)):
        dets = sorted((b, e) for n, b, e in got if n == name)
        assert len(dets) == len(tones)
        for (b, e), (tb, te) in zip(dets, tones):
            # windows are 1 s every 0.5 s: an event starts at most one hop before its tone and ends within a hop
            assert tb - 0.5 - 1e-6 <= b <= tb + 1e-6 and te - 1e-6 <= e <= te + 0.5 + 1e-6
    # every window is in scores.csv: 60 s -> 119 windows, 20 s -> 39
    scores = _rows(out / "scores.csv")
    assert len(scores) == 119 + 39 and set(scores[0]) == {"filename", "begin_s", "end_s", "noise", "tone"}
    assert abs(float(scores[0]["noise"]) + float(scores[0]["tone"]) - 1) < 1e-5
    assert sorted(os.listdir(out)) == [".scores", "a.selections.txt", "b.selections.txt", "detect.json",
                                       "detections.csv", "detections.selections.txt", "done.jsonl", "scores.csv"]
    assert _no_temp_files(out)


def test_tables_written_are_read_back_by_the_annotation_reader(setup):
    from convnet_cli.ingest.annotations import read_tables

    ck, rec, out = setup
    assert invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet", "--combined"]).exit_code == 0
    a = read_tables(str(out / "a.selections.txt"))
    assert [(s.recording, s.label) for s in a] == [("a.wav", "tone")] * 3
    assert [s.begin for s in a] == [float(d["begin_s"]) for d in _rows(out / "detections.csv")
                                     if d["filename"] == "site1/a.wav"]
    assert all(s.score is not None and s.score > 0.9 and s.low_freq == 50.0 and s.high_freq == 450.0 for s in a)
    both = read_tables(str(out / "detections.selections.txt"))
    # the combined table counts file-sequence time; the reader takes the file offset back
    assert sorted((os.path.basename(s.recording), s.begin) for s in both) == sorted(
        (os.path.basename(d["filename"]), float(d["begin_s"])) for d in _rows(out / "detections.csv"))
    from_csv = read_tables(str(out / "detections.csv"))
    assert {s.recording for s in from_csv} == {"site1/a.wav", "b.flac"}


def test_threshold_merge_gap_and_classes_flags(setup):
    ck, rec, out = setup
    r = invoke(["detect", "-f", str(ck), str(rec / "site1" / "a.wav"), "--out", str(out), "--quiet",
                "--merge-gap", "20"])
    assert r.exit_code == 0, r.output
    rows = _rows(out / "detections.csv")
    # gaps between the tones are 18 s and 13.5 s: all of them join into one event
    assert [(float(d["begin_s"]), float(d["end_s"])) for d in rows] == [(9.5, 48.0)] or \
        [(float(d["begin_s"]), float(d["end_s"])) for d in rows] == [(10.0, 48.0)]
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet", "--overwrite",
                "--threshold", "tone=0.99999"])
    assert r.exit_code == 0 and _rows(out / "detections.csv") == []
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet", "--overwrite", "--classes", "noise"])
    assert r.exit_code == 0 and {d["class"] for d in _rows(out / "detections.csv")} == {"noise"}
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--overwrite", "--classes", "tones"])
    assert r.exit_code == 2 and "did you mean 'tone'" in r.output


def test_earlier_output_is_refused_then_overwrite_and_resume(setup):
    ck, rec, out = setup
    args = ["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet"]
    assert invoke(args).exit_code == 0
    r = invoke(args)
    assert r.exit_code == 2 and "--resume" in r.output and "--overwrite" in r.output
    (out / "a.selections.txt").write_text("stale")
    r = invoke(args + ["--overwrite"])
    assert r.exit_code == 0 and "stale" not in (out / "a.selections.txt").read_text()
    r = invoke(args + ["--resume", "--hop", "0.25"])
    assert r.exit_code == 2 and "hop" in r.output


def test_resume_skips_done_recordings_and_redoes_changed_ones(setup):
    ck, rec, out = setup
    args = ["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet"]
    assert invoke(args).exit_code == 0
    first = (out / "b.selections.txt").read_text()
    r = invoke(args + ["--resume"])
    assert r.exit_code == 0 and "0 recording(s)" in r.output and "2 already done" in r.output
    # b.flac changes: a tone moves from 5 s to 12 s
    write_recording(rec / "b.flac", 20, [(12.0, 14.0)], sr=1000, seed=3)
    os.utime(rec / "b.flac", (time.time() + 5, time.time() + 5))
    r = invoke(args + ["--resume"])
    assert r.exit_code == 0 and "1 recording(s)" in r.output and "1 already done" in r.output
    assert (out / "b.selections.txt").read_text() != first
    rows = [d for d in _rows(out / "detections.csv") if d["filename"] == "b.flac"]
    assert len(rows) == 1 and 11.4 <= float(rows[0]["begin_s"]) <= 12.0
    assert len([d for d in _rows(out / "detections.csv") if d["filename"] == "site1/a.wav"]) == 3
    lines = (out / "done.jsonl").read_text().splitlines()
    assert len(lines) == 3 and {"path", "size", "mtime"} <= set(json.loads(lines[-1]))


def test_corrupt_recording_is_skipped_and_named(setup):
    ck, rec, out = setup
    (rec / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 3)
    (rec / "empty.flac").write_bytes(b"")
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    skipped = parse_skipped((out / "skipped.txt").read_text())   # CSV file,reason, as make-batches writes it
    assert sorted(name for name, _ in skipped) == ["broken.wav", "empty.flac"]
    assert all(reason for _, reason in skipped)
    assert {d["filename"] for d in _rows(out / "detections.csv")} == {"site1/a.wav", "b.flac"}
    assert "skipped broken.wav" in r.output
    # nothing readable at all: exit 1
    r = invoke(["detect", "-f", str(ck), str(rec / "broken.wav"), str(rec / "empty.flac"), "--out",
                str(out / "none"), "--quiet"])
    assert r.exit_code == 1 and "none of the recordings could be read" in r.output


def test_truncated_recording_is_skipped_without_a_table(setup):
    ck, rec, out = setup
    data = (rec / "site1" / "a.wav").read_bytes()
    (rec / "cut.wav").write_bytes(data[:len(data) // 2])  # header promises 60 s, 30 s are there
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    skipped = parse_skipped((out / "skipped.txt").read_text())
    assert len(skipped) == 1 and skipped[0][0] == "cut.wav" and skipped[0][1].startswith("truncated")
    assert not (out / "cut.selections.txt").exists()
    assert {d["filename"] for d in _rows(out / "detections.csv")} == {"site1/a.wav", "b.flac"}


def test_ctrl_c_mid_run_leaves_finished_tables_complete(setup, monkeypatch):
    import convnet_cli.detect.detect as det

    ck, rec, out = setup
    real = det.window_probabilities
    calls = []

    def interrupted(run, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # Ctrl-C while the second recording is being read
            raise KeyboardInterrupt
        return real(run, path, *a, **k)

    monkeypatch.setattr(det, "window_probabilities", interrupted)
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet"])
    assert r.exit_code == 130 and "--resume" in r.output
    tables = sorted(n for n in os.listdir(out) if n.endswith(".selections.txt"))
    assert tables == ["b.selections.txt"]                  # the finished one, complete; no half-written a
    assert len((out / "b.selections.txt").read_text().splitlines()) == 2
    assert [d["filename"] for d in _rows(out / "detections.csv")] == ["b.flac"]
    assert len((out / "done.jsonl").read_text().splitlines()) == 1
    assert _no_temp_files(out)
    monkeypatch.setattr(det, "window_probabilities", real)
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet", "--resume"])
    assert r.exit_code == 0 and "1 recording(s)" in r.output
    assert len(_rows(out / "detections.csv")) == 4


def test_ctrl_c_during_a_table_write_leaves_no_torn_table(setup, monkeypatch):
    from convnet_cli.detect import raven

    ck, rec, out = setup
    real = raven.table_text

    def text_then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(raven, "table_text", text_then_interrupt)
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet"])
    assert r.exit_code == 130
    assert not [n for n in os.listdir(out) if n.endswith(".selections.txt")]
    assert _no_temp_files(out)
    assert not (out / "done.jsonl").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_sigint_to_a_running_detect_exits_130_with_complete_tables(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    rec = many_recordings(tmp_path / "rec")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-m", "convnet_cli", "detect", "-f", str(ck), str(rec), "--out", str(out),
                          "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = out / "done.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (done.exists() and done.read_text().count("\n") >= 2):
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    output = p.communicate(timeout=120)[0].decode()
    names = [json.loads(line)["table"] for line in done.read_text().splitlines()]
    tables = sorted(n for n in os.listdir(out) if n.endswith(".selections.txt"))
    if p.returncode == 130:
        assert "interrupted" in output
        assert 2 <= len(names) < 40
    else:  # it finished before the signal arrived
        assert p.returncode == 0 and len(names) == 40
    assert tables == sorted(names)  # a table for every finished recording and for no other
    for t in tables:
        lines = (out / t).read_text().splitlines()
        assert lines[0].startswith("Selection\t") and len(lines) == 2 and lines[1].count("\t") == 9
    assert len(_rows(out / "detections.csv")) == len(names)
    assert _no_temp_files(out)


def test_hop_default_comes_from_the_checkpoint(tmp_path):
    from convnet_cli.detect.detect import _spec_and_hop
    from convnet_cli.train.checkpoint import load_checkpoint

    spec, hop = _spec_and_hop(load_checkpoint(tone_checkpoint(tmp_path / "a.npz", window_hop=0.25)), None)
    assert hop == 0.25
    spec, hop = _spec_and_hop(load_checkpoint(tone_checkpoint(tmp_path / "b.npz", window_hop=None)), None)
    assert hop == spec.duration / 2 == 0.5
    assert _spec_and_hop(load_checkpoint(str(tmp_path / "b.npz")), 2.0)[1] == 2.0


def test_stem_clash_joins_folders(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    for site in ("s1", "s2"):
        (tmp_path / "rec" / site).mkdir(parents=True)
        write_recording(tmp_path / "rec" / site / "x.wav", 5, [(1, 3)], sr=1000)
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0
    assert sorted(n for n in os.listdir(tmp_path / "out") if n.endswith(".txt")) == ["s1__x.selections.txt",
                                                                                   "s2__x.selections.txt"]


def test_window_scores_equal_predict_on_windows_cut_by_make_batches(tmp_path):
    """detect's per-window probabilities are predict's on the very windows make-batches --annotations cuts
    (same features code, same normalisation, same net)."""
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.recordings import make_batches_from_annotations
    from convnet_cli.predict.predict import predict_batches
    from tests.detect_fixtures import FEATURES

    ck = tone_checkpoint(tmp_path / "best.npz", window_hop=0.5)
    rec = tmp_path / "rec"
    (rec / "s1").mkdir(parents=True)
    write_recording(rec / "s1" / "a.wav", 30, [(5.0, 7.0), (20.0, 21.0)])          # 2 kHz: resampled
    write_recording(rec / "b.flac", 25, [(12.0, 13.5)], sr=1000, seed=4)
    (tmp_path / "ann.csv").write_text("filename,start,end,label\ns1/a.wav,5,7,tone\ns1/a.wav,20,21,tone\n"
                                      "b.flac,12,13.5,tone\n")
    batches = tmp_path / "batches"
    make_batches_from_annotations(str(rec), str(batches), str(tmp_path / "ann.csv"),
                                  features=FeatureSpec.from_dict(FEATURES), window_hop=0.5, background="noise", batch_size=40,
                 test_fraction=0.0, seed=0, progress=False, warn=lambda line: None)
    from convnet_cli.data.batch_files import BatchSet

    bs = BatchSet(str(batches))
    preds = predict_batches(str(ck), str(batches), batches=bs.batch_numbers)
    assert len(preds.filenames) > 40
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(tmp_path / "out"), "--quiet", "--scores"])
    assert r.exit_code == 0, r.output
    scores = {(d["filename"], d["begin_s"]): (float(d["noise"]), float(d["tone"]))
              for d in _rows(tmp_path / "out" / "scores.csv")}
    names = preds.label_names
    assert set(names) == {"noise", "tone"}
    for fn, p in zip(preds.filenames, preds.probs):
        rec_name, start = fn.rsplit("@", 1)
        got = scores[(rec_name, start)]
        want = (p[names.index("noise")], p[names.index("tone")])
        assert np.allclose(got, want, atol=2e-6), (fn, got, want)


def test_demo_recordings_synthesis_is_read_back_as_raven_tables(tmp_path):
    from convnet_cli.demo_recordings import make_annotated_recordings
    from convnet_cli.ingest.annotations import read_tables
    from convnet_cli.ingest.windows import recording_info

    made = make_annotated_recordings(str(tmp_path), n_train=2, n_heldout=1, seconds=30.0, seed=1)
    sel = read_tables(made["train"][1]) + read_tables(made["heldout"][1])
    # one selection per Selection number although each is listed for two views
    assert len(sel) == sum(made["calls"].values()) and {s.label for s in sel} == {"upcall", "gunshot"}
    assert all(0 < s.begin < s.end < 30 for s in sel)
    assert recording_info(os.path.join(made["heldout"][0], "rec03.flac")) == (30.0, 2000)


def test_demo_recordings_runs_end_to_end(tmp_path, monkeypatch):
    """The pipeline with one epoch (the 15-epoch result is in docs/RECORDINGS.md): every stage leaves its files."""
    import convnet_cli.demo_recordings as demo

    real = demo.make_annotated_recordings
    monkeypatch.setattr(demo, "make_annotated_recordings",
                        lambda root, seed=0: real(root, n_train=3, n_heldout=1, seconds=40.0, seed=seed))
    r = invoke(["demo", "--recordings", "--dir", str(tmp_path / "d"), "--batches", str(tmp_path / "b"),
                "--epochs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "held-out recordings: precision" in r.output and "Raven tables:" in r.output
    assert (tmp_path / "d" / "detections" / "rec04.selections.txt").exists()
    res = json.loads((tmp_path / "d" / "evaluation" / "evaluation.json").read_text())
    assert set(res["classes"]) == {"gunshot", "upcall"} and res["overall"]["tp"] + res["overall"]["fn"] > 0


def test_recording_shorter_than_a_window_gets_an_empty_table_and_a_note(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    (tmp_path / "rec").mkdir()
    write_recording(tmp_path / "rec" / "short.wav", 0.6, [], sr=1000)
    r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0 and "shorter than one 1-s window" in r.output
    assert (tmp_path / "out" / "short.selections.txt").read_text().count("\n") == 1  # the header only
    assert json.loads((tmp_path / "out" / "done.jsonl").read_text())["windows"] == 0


def test_progress_label_counts_audio_and_real_time_rate():
    from convnet_cli.progress import AudioProgress   # detect's bar (as make-batches --annotations')

    p = AudioProgress("detect", 7200.0, enabled=False)
    p.t0 -= 2.0           # as if 2 s had passed
    p.add(1800.0)
    label = p._text()
    assert label.startswith("0.50/2.00 h of audio, ") and label.endswith("x real time")
    rate = float(label.split(", ")[1].split("x")[0].replace(",", ""))
    assert 100 < rate <= 900   # 1800 s of audio in a little over 2 s
    assert AudioProgress("detect", 600.0, enabled=False)._text().startswith("0.00/10.00 min of audio")


def test_amounts_of_audio_are_said_in_seconds_minutes_or_hours():
    from convnet_cli.progress import audio_span

    assert [audio_span(s) for s in (0, 10, 59.94, 60, 750, 3599, 3600, 6 * 3600)] == \
        ["0.0 s", "10.0 s", "59.9 s", "1.0 min", "12.5 min", "60.0 min", "1.00 h", "6.00 h"]
