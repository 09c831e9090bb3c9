"""detect and evaluate on hostile input: journals, OUT_DIRs holding other files, overflowing nets, dense
choruses, odd names and scores (issue 23). Each test failed before its fix."""
import csv
import errno
import json
import os

import numpy as np
import pytest

from convnet_cli.errors import ConfigError
from tests.detect_fixtures import tone_checkpoint, write_recording
from tests.helpers import invoke

TONES = [(5.0, 7.0), (20.0, 22.0)]


@pytest.fixture
def one(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    (tmp_path / "rec").mkdir()
    write_recording(tmp_path / "rec" / "x.wav", 30, TONES, sr=1000)
    return ck, tmp_path / "rec", tmp_path / "out"


def _detect(ck, rec, out, *extra):
    return invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet", *extra])


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _one_line_error(r, code=2):
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if "error:" in ln]
    assert len(errors) == 1, r.output
    return errors[0]


# ---- item 9: --overwrite removes only detect's own files -----------------------------------------------

def test_raven_tables_of_the_user_in_out_dir_are_neither_refused_nor_deleted(one):
    ck, rec, out = one
    out.mkdir()
    mine = out / "x.Table.1.selections.txt"
    mine.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n1\tSpectrogram 1\t1\t5\t7\ttone\n")
    same_name = out / "x.selections.txt"          # hand-made, under the very name detect would choose
    same_name.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n")
    r = _detect(ck, rec, out)
    assert r.exit_code == 0, r.output             # the user's tables are not an earlier detect's output
    assert mine.read_text().startswith("Selection") and same_name.read_text().count("\n") == 1
    own = json.loads((out / "done.jsonl").read_text())["table"]
    assert own != "x.selections.txt" and (out / own).exists()
    r = _detect(ck, rec, out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert mine.exists() and same_name.exists()   # --overwrite removed only what the journal names


def test_overwrite_keeps_a_file_under_a_fixed_name_that_detect_did_not_write(one):
    """detect.json lists the fixed-name files its run wrote: a hand-made detections.selections.txt in an
    OUT_DIR whose runs never wrote the combined table survives --overwrite; one detect wrote goes."""
    ck, rec, out = one
    assert _detect(ck, rec, out).exit_code == 0
    assert json.loads((out / "detect.json").read_text())["outputs"] == ["detections.csv"]
    mine = out / "detections.selections.txt"
    mine.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n")
    r = _detect(ck, rec, out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert mine.read_text().count("\n") == 1
    mine.unlink()
    assert _detect(ck, rec, out, "--overwrite", "--combined").exit_code == 0
    assert "detections.selections.txt" in json.loads((out / "detect.json").read_text())["outputs"]
    assert _detect(ck, rec, out, "--overwrite").exit_code == 0
    assert not mine.exists()                      # detect's own combined table, from the run before


@pytest.mark.parametrize("name", ["done.jsonl", "detect.json"])
@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_fifo_under_detects_names_in_out_dir_is_refused_not_waited_on(one, name, flag):
    import subprocess
    import sys

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    ck, rec, out = one
    assert _detect(ck, rec, out).exit_code == 0
    os.unlink(out / name)
    os.mkfifo(out / name)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "convnet_cli", "detect", "-f", str(ck), str(rec), "--out", str(out),
                        "--quiet", flag], capture_output=True, text=True, timeout=120, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if flag == "--overwrite" and name == "detect.json":   # not read on --overwrite: replaced
        assert r.returncode == 0, r.stderr
        assert (out / name).is_file()
        return
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"{out / name}: is a FIFO" in lines[0] and "--out" in lines[0]


# ---- item 11 / 15: done.jsonl and detect.json are checked -----------------------------------------------

def test_journal_record_naming_a_file_outside_out_dir_is_refused(one, tmp_path):
    ck, rec, out = one
    assert _detect(ck, rec, out, "--scores").exit_code == 0
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    lines = (out / "done.jsonl").read_text().splitlines()
    rec0 = json.loads(lines[0])
    rec0["scores"] = str(secret)
    (out / "done.jsonl").write_text(json.dumps(rec0) + "\n")
    r = _detect(ck, rec, out, "--scores", "--resume")
    line = _one_line_error(r)
    assert "done.jsonl line 1" in line and "scores" in line
    assert "root:x" not in (out / "scores.csv").read_text()
    for bad in ("../secret.txt", ".scores/../../secret.txt"):
        rec0["scores"] = bad
        (out / "done.jsonl").write_text(json.dumps(rec0) + "\n")
        assert "done.jsonl line 1" in _one_line_error(_detect(ck, rec, out, "--scores", "--resume"))
    # a symlink inside OUT_DIR that leads out of it
    rec0["scores"] = ".scores/link.csv"
    os.symlink(secret, out / ".scores" / "link.csv")
    (out / "done.jsonl").write_text(json.dumps(rec0) + "\n")
    assert "done.jsonl line 1" in _one_line_error(_detect(ck, rec, out, "--scores", "--resume"))
    assert "root:x" not in (out / "scores.csv").read_text()


@pytest.mark.parametrize("record,named", [
    ('{"path": ["x"]}', "'path' is [\"x\"], not text"),
    ('{"path": "/a.wav", "size": "big", "mtime": 1, "name": "a", "table": "a.selections.txt"}', "'size' is \"big\""),
    ('[1, 2]', "is not a record"),
    ('{"path": "/a.wav", "size": 1, "mtime": 1, "name": "a", "table": "../a.txt"}', "'table' '../a.txt'")])
def test_bad_journal_line_is_one_line_naming_file_and_line(one, record, named):
    ck, rec, out = one
    assert _detect(ck, rec, out).exit_code == 0
    good = (out / "done.jsonl").read_text()
    (out / "done.jsonl").write_text(good + record + "\n")
    line = _one_line_error(_detect(ck, rec, out, "--resume"))
    assert f"{out / 'done.jsonl'} line 2" in line and named in line, line


def test_resume_without_or_with_a_corrupt_detect_json_is_refused(one):
    ck, rec, out = one
    assert _detect(ck, rec, out).exit_code == 0
    settings = out / "detect.json"
    settings.write_text("{not json")
    line = _one_line_error(_detect(ck, rec, out, "--resume", "--window-hop", "0.25"))
    assert "detect.json" in line and "--overwrite" in line
    settings.unlink()
    line = _one_line_error(_detect(ck, rec, out, "--resume", "--window-hop", "0.25"))
    assert "detect.json" in line
    settings.write_text('{"hop": 0.5}')             # readable but not detect's: settings missing
    assert "detect.json" in _one_line_error(_detect(ck, rec, out, "--resume"))
    assert _detect(ck, rec, out, "--overwrite").exit_code == 0


# ---- item 12: one detect per OUT_DIR -------------------------------------------------------------------

def test_a_second_detect_into_a_locked_out_dir_is_refused(one):
    from convnet_cli.data.batch_set_swap import BatchDirLock
    from convnet_cli.detect.detect import LOCK

    ck, rec, out = one
    out.mkdir()
    with BatchDirLock(out, LOCK, "convnet detect"):
        line = _one_line_error(_detect(ck, rec, out, "--resume"))
    assert "another convnet detect" in line and str(out) in line
    assert not (out / "done.jsonl").exists()
    r = _detect(ck, rec, out, "--resume")           # the lock is gone with its holder
    assert r.exit_code == 0, r.output
    assert not (out / LOCK).exists()


# ---- item 6: a net whose outputs are not finite ----------------------------------------------------------

def _overflowing_checkpoint(path):
    from convnet_cli.train.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(tone_checkpoint(path))
    # finite weights whose products overflow float32: the logits are +-inf, softmax gives NaN
    arrays = dict(ck.arrays)
    w = np.asarray(arrays["fc1/weights"], np.float64)
    arrays["fc1/weights"] = (w * (3e38 / float(np.abs(w).max()))).astype(np.float32)
    return save_checkpoint(str(path), arrays, ck.state)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_detect_refuses_a_net_whose_probabilities_are_not_finite(one, tmp_path):
    ck, rec, out = one
    bad = _overflowing_checkpoint(tmp_path / "inf.npz")
    line = _one_line_error(_detect(bad, rec, out, "--scores"))
    assert "non-finite" in line and "x.wav" in line
    assert not (out / "scores.csv").exists() and not (out / "done.jsonl").exists()


def test_a_fifo_planted_as_detects_lock_is_refused_naming_detect(one):
    from convnet_cli.detect.detect import LOCK

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    ck, rec, out = one
    out.mkdir()
    os.mkfifo(out / LOCK)
    line = _one_line_error(_detect(ck, rec, out))
    assert f"{out / LOCK}: is a FIFO" in line and "convnet detect did not write this lock file" in line


def test_a_refused_overflowing_net_prints_one_line_and_leaves_no_settings(one, tmp_path):
    """Through the real entry point (where NumPy's floating-point warnings would reach the user): one line,
    exit 2; and the refused run leaves no detect.json, so the next run needs no --overwrite."""
    import subprocess
    import sys

    ck, rec, out = one
    bad = _overflowing_checkpoint(tmp_path / "inf.npz")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONWARNINGS", None)
    r = subprocess.run([sys.executable, "-m", "convnet_cli", "detect", "-f", str(bad), str(rec), "--out", str(out),
                        "--quiet"], capture_output=True, text=True, timeout=120, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "non-finite" in lines[0], r.stderr
    assert not (out / "detect.json").exists()
    assert _detect(ck, rec, out).exit_code == 0


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_export_verify_refuses_non_finite_probabilities(tmp_path):
    pytest.importorskip("onnxruntime")
    bad = _overflowing_checkpoint(tmp_path / "inf.npz")
    r = invoke(["export", "-f", str(bad), "--out", str(tmp_path / "m.onnx"), "--verify", "--quiet"])
    line = _one_line_error(r)
    assert "non-finite" in line and "difference" not in line


# ---- item 7: class names that a tab-separated table cannot hold ----------------------------------------

def test_class_name_with_a_tab_is_refused_at_detect_start(one, tmp_path):
    from convnet_cli.train.checkpoint import load_checkpoint, save_checkpoint

    ck, rec, out = one
    c = load_checkpoint(str(ck))
    state = dict(c.state, label_names=["noise", "up\tcall"])
    tabbed = save_checkpoint(str(tmp_path / "tab.npz"), c.arrays, state)
    line = _one_line_error(_detect(tabbed, rec, out))
    assert "tab" in line and "--classes" in line
    assert not (out / "done.jsonl").exists()
    # a class that is not reported may hold one (scores.csv quotes it)
    assert _detect(tabbed, rec, out, "--classes", "noise").exit_code == 0


# ---- item 8: dense choruses ---------------------------------------------------------------------------

def test_a_run_of_windows_splits_where_the_score_dips_between_calls():
    from convnet_cli.detect.events import events_for_class

    starts = np.arange(13) * 0.5          # 2-s windows every 0.5 s: every run overlaps its neighbours
    p = np.array([0.1, 0.9, 0.97, 0.9, 0.6, 0.55, 0.6, 0.95, 0.99, 0.9, 0.6, 0.96, 0.2])
    ev = events_for_class(starts, p, 2.0, 0.5, 0.0, "c", split_dip=0.3)
    assert [e.score for e in ev] == pytest.approx([0.97, 0.99, 0.96])
    assert [(e.begin, e.end) for e in ev] == [(0.5, 3.5), (3.5, 6.0), (6.0, 7.5)]  # cut at the dip windows' centres
    # a shallower dip than the margin does not split; without the rule (0) the run is one event
    assert len(events_for_class(starts, p, 2.0, 0.5, 0.0, "c", split_dip=0.45)) == 1
    assert len(events_for_class(starts, p, 2.0, 0.5, 0.0, "c", split_dip=0)) == 1
    # windows joined by --merge-gap are not split again
    q = np.zeros(13)
    q[[1, 6]] = 0.9
    assert len(events_for_class(starts, q, 0.5, 0.5, 3.0, "c", split_dip=0.3)) == 1


def test_a_chorus_of_close_calls_gives_one_event_per_call_and_evaluate_notes_merged_ones(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz", window_hop=0.25)
    calls = [(10 + 1.6 * i, 11 + 1.6 * i) for i in range(10)]     # 1-s calls 0.6 s apart
    (tmp_path / "rec").mkdir()
    write_recording(tmp_path / "rec" / "chorus.wav", 40, calls, sr=1000)
    ann = tmp_path / "ann.csv"
    ann.write_text("filename,start,end,label\n" + "".join(f"chorus.wav,{b:.2f},{e:.2f},tone\n" for b, e in calls))
    assert _detect(ck, tmp_path / "rec", tmp_path / "split").exit_code == 0
    r = _evaluate(tmp_path, tmp_path / "split", ann)
    t = json.load(open(tmp_path / "ev" / "evaluation.json"))["classes"]["tone"]
    assert (t["tp"], t["fp"], t["fn"]) == (10, 0, 0), r.output
    # without the rule the windows between the calls join them: few events, each overlapping several calls
    assert _detect(ck, tmp_path / "rec", tmp_path / "whole", "--split-dip", "0").exit_code == 0
    r = _evaluate(tmp_path, tmp_path / "whole", ann)
    assert len(_rows(tmp_path / "whole" / "detections.csv")) < 5
    assert "overlap several annotations of their class" in r.output


def test_max_event_caps_the_length_of_an_event():
    from convnet_cli.detect.events import events_for_class

    starts = np.arange(59) * 0.5          # 1-s windows: one 30-s run
    p = np.full(59, 0.95)
    ev = events_for_class(starts, p, 1.0, 0.5, 0.0, "c", max_event=10.0)
    assert len(ev) == 3 and all(e.end - e.begin <= 10.0 + 1e-9 for e in ev)
    assert ev[0].begin == 0.0 and ev[-1].end == 30.0 and ev[0].end == ev[1].begin


def test_detect_flags_split_dip_and_max_event(one):
    ck, rec, out = one
    r = _detect(ck, rec, out, "--merge-gap", "20", "--max-event", "8")
    assert r.exit_code == 0, r.output
    ev = [(float(d["begin_s"]), float(d["end_s"])) for d in _rows(out / "detections.csv")]
    # one 4.5-22.5 s event without the cap; cut into pieces of at most 8 s, those inside the gap dropped
    assert len(ev) == 2 and all(e - b <= 8.0 + 1e-6 for b, e in ev)
    assert "--max-event" in invoke(["detect", "--help"]).output and "--split-dip" in invoke(["detect", "--help"]).output
    assert "window" in _one_line_error(_detect(ck, rec, out, "--overwrite", "--max-event", "0.5"))
    assert "--split-dip" in _one_line_error(_detect(ck, rec, out, "--overwrite", "--split-dip", "1.5"))


# ---- weak answers: flags ------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,word", [("--hop", "1e-9", "--window-hop"), ("--hop", "inf", "--window-hop"),
                                             ("--hop", "nan", "--window-hop"),
                                             ("--window-hop", "0.0001", "at least 0.001"),
                                             ("--merge-gap", "nan", "--merge-gap"),
                                             ("--merge-gap", "inf", "--merge-gap")])
def test_absurd_hop_and_merge_gap_are_refused(one, flag, value, word):
    ck, rec, out = one
    line = _one_line_error(_detect(ck, rec, out, flag, value))
    assert word in line
    assert not (out / "done.jsonl").exists()


def test_out_on_a_read_only_file_system_is_one_line(one, tmp_path, monkeypatch):
    ck, rec, out = one
    real = os.makedirs

    def read_only(path, *a, **k):
        if os.path.abspath(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "makedirs", read_only)
    line = _one_line_error(_detect(ck, rec, tmp_path / "ro" / "out"))
    assert str(tmp_path / "ro" / "out") in line and "Read-only" in line and "--out" in line
    ann = tmp_path / "ann.csv"
    ann.write_text("filename,start,end,label\nx.wav,5,7,tone\n")
    assert _detect(ck, rec, out).exit_code == 0
    line = _one_line_error(invoke(["evaluate", str(out), str(ann), "--out", str(tmp_path / "ro" / "ev")]))
    assert str(tmp_path / "ro" / "ev") in line and "--out" in line


def test_two_inputs_with_the_same_relative_name_get_unique_names(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    paths = []
    for site in ("A", "B", "C"):
        (tmp_path / site / "x").mkdir(parents=True)
        paths.append(str(write_recording(tmp_path / site / "x" / "rec.wav", 5, [(1, 3)], sr=1000)))
    r = invoke(["detect", "-f", str(ck), *paths, "--out", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0, r.output
    names = [d["filename"] for d in _rows(tmp_path / "out" / "detections.csv")]
    assert sorted(names) == ["A/x/rec.wav", "B/x/rec.wav", "C/x/rec.wav"]
    assert sorted(n for n in os.listdir(tmp_path / "out") if n.endswith(".selections.txt")) == [
        "A__x__rec.selections.txt", "B__x__rec.selections.txt", "C__x__rec.selections.txt"]


# ---- evaluate ----------------------------------------------------------------------------------------

DET_HEADER = "filename,begin_s,end_s,class,score\n"


def _evaluate(tmp_path, dets, ann, *extra):
    return invoke(["evaluate", str(dets), str(ann), "--out", str(tmp_path / "ev"), *extra])


@pytest.mark.parametrize("score", ["nan", "7", "-3", "1e308", "inf", ""])
def test_scores_outside_0_1_or_not_finite_are_refused_naming_the_line(tmp_path, score):
    dets = tmp_path / "detections.csv"
    dets.write_text(DET_HEADER + "x.wav,5.000,7.000,tone,0.9000\nx.wav,10.000,12.000,tone," + score + "\n")
    ann = tmp_path / "ann.csv"
    ann.write_text("filename,start,end,label\nx.wav,5,7,tone\n")
    line = _one_line_error(_evaluate(tmp_path, dets, ann))
    assert f"{dets} line 3" in line
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "x.selections.txt").write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tClass\tScore\n"
                                             "1\tSpectrogram 1\t1\t5\t7\ttone\t0.9\n2\tSpectrogram 1\t1\t10\t12\ttone\t"
                                             + score + "\n")
    line = _one_line_error(_evaluate(tmp_path, tables, ann))
    assert "x.selections.txt line 3" in line


def test_out_dir_whose_detections_csv_is_missing_is_read_from_its_tables(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    for site in ("s1", "s2"):
        (tmp_path / "rec" / site).mkdir(parents=True)
        write_recording(tmp_path / "rec" / site / f"{site}x.wav", 30, TONES, sr=1000)
    out = tmp_path / "out"
    assert _detect(ck, tmp_path / "rec", out).exit_code == 0
    (out / "detections.csv").unlink()             # as a killed run leaves it
    ann = tmp_path / "ann.csv"
    ann.write_text("filename,start,end,label\n" + "".join(f"{s}/{s}x.wav,{b},{e},tone\n" for s in ("s1", "s2")
                                                            for b, e in TONES))
    r = _evaluate(tmp_path, out, ann)
    assert r.exit_code == 0, r.output
    t = json.load(open(tmp_path / "ev" / "evaluation.json"))["classes"]["tone"]
    assert (t["tp"], t["fp"], t["fn"]) == (4, 0, 0)


def test_annotations_past_the_end_of_the_audio_detect_read_are_left_out_with_a_note(one, tmp_path):
    """A table of a whole recording against detect's run on a snippet of it (the first 30 s of a longer
    segment): what begins after the audio's end could not be detected, so it is not a miss."""
    ck, rec, out = one
    assert _detect(ck, rec, out).exit_code == 0
    ann = tmp_path / "ann.csv"
    ann.write_text("filename,start,end,label\n" + "".join(f"x.wav,{b},{e},tone\n" for b, e in TONES)
                   + "x.wav,29.5,31.0,tone\nx.wav,45.0,47.0,tone\nx.wav,280.0,281.0,tone\n")
    r = _evaluate(tmp_path, out, ann)
    assert r.exit_code == 0, r.output
    t = json.load(open(tmp_path / "ev" / "evaluation.json"))["classes"]["tone"]
    assert (t["tp"], t["fp"], t["fn"]) == (2, 0, 1)       # the call across the end stays: it could be heard
    assert "2 annotation(s) begin after the end of their recording" in r.output and "x.wav' is 30.0 s" in r.output


def test_a_detect_out_dir_as_the_annotations_counts_each_once(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    (tmp_path / "rec").mkdir()
    write_recording(tmp_path / "rec" / "x.wav", 30, TONES, sr=1000)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _detect(ck, tmp_path / "rec", a, "--combined").exit_code == 0
    assert _detect(ck, tmp_path / "rec", b, "--combined").exit_code == 0
    r = _evaluate(tmp_path, a, b)
    assert r.exit_code == 0, r.output
    t = json.load(open(tmp_path / "ev" / "evaluation.json"))["classes"]["tone"]
    assert (t["tp"], t["fp"], t["fn"]) == (2, 0, 0)


def test_evaluate_classes_naming_an_absent_class_lists_those_present(tmp_path):
    dets = tmp_path / "detections.csv"
    dets.write_text(DET_HEADER + "x.wav,5.000,7.000,tone,0.9000\n")
    ann = tmp_path / "ann.csv"
    ann.write_text("filename,start,end,label\nx.wav,5,7,tone\nx.wav,9,10,click\n")
    line = _one_line_error(_evaluate(tmp_path, dets, ann, "--classes", "tone,tones"))
    assert "tones" in line and "click, tone" in line and "did you mean 'tone'" in line


def test_detection_overlapping_several_annotations_is_noted(tmp_path):
    dets = tmp_path / "detections.csv"
    dets.write_text(DET_HEADER + "x.wav,0.000,25.000,tone,0.9000\nx.wav,40.000,41.000,tone,0.8000\n")
    ann = tmp_path / "ann.csv"
    ann.write_text("filename,start,end,label\n" + "".join(f"x.wav,{b},{b + 1},tone\n" for b in (2, 6, 10, 14, 40)))
    r = _evaluate(tmp_path, dets, ann)
    assert r.exit_code == 0, r.output
    assert "1 detection(s) overlap several annotations of their class (4 annotations)" in r.output
    res = json.load(open(tmp_path / "ev" / "evaluation.json"))
    assert any("overlap several annotations" in n for n in res["notes"])
    assert (res["classes"]["tone"]["tp"], res["classes"]["tone"]["fn"]) == (2, 3)


def test_recording_names_with_a_newline_or_tab_survive_detect_and_evaluate(tmp_path):
    ck = tone_checkpoint(tmp_path / "best.npz")
    (tmp_path / "rec").mkdir()
    odd = ["line\nbreak.wav", "tab\there.wav"]
    for n in odd:
        write_recording(tmp_path / "rec" / n, 30, TONES, sr=1000)
    out = tmp_path / "out"
    assert _detect(ck, tmp_path / "rec", out).exit_code == 0
    assert sorted({d["filename"] for d in _rows(out / "detections.csv")}) == sorted(odd)
    for n in odd:    # Raven tables cannot quote: the Begin File cell holds the name with spaces for tab/newline
        table = (out / (os.path.splitext(n)[0] + ".selections.txt")).read_text().splitlines()
        assert len(table) == 3 and table[1].split("\t")[7] == n.replace("\n", " ").replace("\t", " ")
    ann = tmp_path / "ann"
    ann.mkdir()
    for n in odd:
        (ann / (os.path.splitext(n)[0] + ".Table.1.selections.txt")).write_text(
            "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n"
            + "".join(f"{i}\tSpectrogram 1\t1\t{b}\t{e}\ttone\n" for i, (b, e) in enumerate(TONES, 1)))
    for dets in (out, out / "detections.csv"):
        r = _evaluate(tmp_path, dets, ann)
        assert r.exit_code == 0, r.output
        t = json.load(open(tmp_path / "ev" / "evaluation.json"))["classes"]["tone"]
        assert (t["tp"], t["fp"], t["fn"]) == (4, 0, 0), dets


def test_reported_class_check_is_a_config_error():
    from convnet_cli.detect.events import check_class_names

    with pytest.raises(ConfigError, match="line break"):
        check_class_names(["a\nb"], "ck.npz")
    check_class_names(["upcall", "gun shot"], "ck.npz")


def test_resume_of_an_out_dir_from_before_split_dip_says_how(one):
    ck, rec, out = one
    assert _detect(ck, rec, out).exit_code == 0
    settings = json.loads((out / "detect.json").read_text())
    del settings["split_dip"], settings["max_event"]      # as a convnet before these flags wrote it
    (out / "detect.json").write_text(json.dumps(settings))
    assert "give --split-dip 0 to resume it" in _one_line_error(_detect(ck, rec, out, "--resume"))
    r = _detect(ck, rec, out, "--resume", "--split-dip", "0")
    assert r.exit_code == 0 and "1 already done" in r.output
