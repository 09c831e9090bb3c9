"""Calibrated thresholds (evaluate --calibrate, thresholds.yaml for detect) and re-thresholding an earlier
detect run from its scores (detect --from-scores), SPEC 18."""
from __future__ import annotations

import csv

import pytest

from convnet_cli.detect.evaluate import Interval, calibrate, evaluate, parse_calibrate
from convnet_cli.errors import ConfigError
from convnet_cli.thresholds import parse_thresholds, read_thresholds, write_thresholds
from tests.detect_fixtures import tone_checkpoint, write_recording
from tests.helpers import invoke

TONES_A = [(10.0, 12.0), (30.0, 31.5), (45.0, 48.0)]


def _curve_case():
    # class a: scores 0.9 (hit), 0.8 (miss), 0.7 (hit), 0.6 (miss); 3 calls, one never found
    dets = {"r": [Interval(0, 1, "a", 0.9), Interval(10, 11, "a", 0.8), Interval(20, 21, "a", 0.7),
                  Interval(30, 31, "a", 0.6), Interval(40, 41, "b", 0.5)]}
    anns = {"r": [Interval(0, 1, "a"), Interval(20, 21, "a"), Interval(50, 51, "a"), Interval(60, 61, "b")]}
    return evaluate(dets, anns, ["a", "b"], 0.5, 0.9)


def test_calibrate_to_a_precision_and_to_f1_by_hand():
    ev = _curve_case()
    # a: P 1, .5, .667, .5 and R 1/3, 1/3, 2/3, 2/3 at thresholds .9 .8 .7 .6
    th, notes = calibrate(ev.curves, ["a", "b"], ("precision", 0.6))
    assert th["a"] == pytest.approx(0.7)             # the lowest threshold whose precision reaches 0.6
    assert th["b"] == 1.0 and any("b: no threshold reaches precision 0.6" in n for n in notes)
    assert calibrate(ev.curves, ["a"], ("precision", 0.9))[0]["a"] == pytest.approx(0.9)
    # F1: .5, .4, .667, .571: the best at 0.7
    assert calibrate(ev.curves, ["a"], ("f1", None))[0]["a"] == pytest.approx(0.7)


@pytest.mark.parametrize("text, want", [("precision=0.9", ("precision", 0.9)), ("F1", ("f1", None)),
                                        ("precision = 1", ("precision", 1.0))])
def test_parse_calibrate(text, want):
    assert parse_calibrate(text) == want


@pytest.mark.parametrize("text", ["precision=0", "precision=1.5", "recall=0.9", "precision=x", ""])
def test_parse_calibrate_refuses_what_it_cannot_do(text):
    with pytest.raises(ConfigError, match="--calibrate"):
        parse_calibrate(text)


def test_thresholds_yaml_round_trip_and_errors(tmp_path):
    p = str(tmp_path / "thresholds.yaml")
    write_thresholds(p, {"upcall": 0.8125, "yes": 0.3, "two words": 0.5, "a:b": 0.25}, "made by a test\nline 2")
    got = parse_thresholds(p, ["upcall", "yes", "two words", "a:b", "other"])
    assert got == {"upcall": 0.8125, "yes": 0.3, "two words": 0.5, "a:b": 0.25, "other": 0.5}
    (tmp_path / "bad.yaml").write_text("upcall: 0.8\ngunshot: 0.7\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: class 'gunshot' \(line 2\) is not a class of the network"):
        read_thresholds(str(tmp_path / "bad.yaml"), ["upcall", "noise"])
    (tmp_path / "high.yaml").write_text("upcall: 1.5\n")
    with pytest.raises(ConfigError, match="the threshold of 'upcall' .* is 1.5"):
        read_thresholds(str(tmp_path / "high.yaml"), ["upcall"])
    (tmp_path / "list.yaml").write_text("- 0.5\n")
    with pytest.raises(ConfigError, match="must be a mapping of class: threshold"):
        read_thresholds(str(tmp_path / "list.yaml"), ["upcall"])


@pytest.fixture
def scored(tmp_path):
    """A detect OUT_DIR with scores.csv over two recordings of tones, and the tones as annotations."""
    ck = tone_checkpoint(tmp_path / "best.npz")
    rec = tmp_path / "rec"
    rec.mkdir()
    write_recording(rec / "a.wav", 60, TONES_A)
    write_recording(rec / "b.wav", 20, [(5.0, 7.0)], sr=1000, seed=3)
    out = tmp_path / "out"
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet", "--scores"])
    assert r.exit_code == 0, r.output
    ann = tmp_path / "ann.csv"
    with open(ann, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "start", "end", "label"])
        for b, e in TONES_A:
            w.writerow(["a.wav", b, e, "tone"])
        w.writerow(["b.wav", 5.0, 7.0, "tone"])
        w.writerow(["b.wav", 14.0, 15.0, "tone"])    # a call the detector misses
    return ck, rec, out, ann


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_from_scores_gives_detects_own_events_without_the_net(scored, tmp_path):
    ck, rec, out, _ = scored
    new = tmp_path / "again"
    r = invoke(["detect", "--from-scores", str(out), "--out", str(new)])
    assert r.exit_code == 0, r.output
    assert _rows(new / "detections.csv") == _rows(out / "detections.csv")
    assert (new / "a.selections.txt").read_text() == (out / "a.selections.txt").read_text()
    # a higher threshold, as detect itself would apply it
    strict = tmp_path / "strict"
    assert invoke(["detect", "--from-scores", str(out), "--threshold", "0.9999", "--out", str(strict)]).exit_code == 0
    direct = tmp_path / "direct"
    assert invoke(["detect", "-f", str(ck), str(rec), "--out", str(direct), "--quiet", "--threshold",
                   "0.9999"]).exit_code == 0
    assert _rows(strict / "detections.csv") == _rows(direct / "detections.csv")
    # the new folder is a detect OUT_DIR: evaluate reads it as one
    r = invoke(["evaluate", str(new), str(scored[3]), "--out", str(tmp_path / "ev"), "--quiet"])
    assert r.exit_code == 0, r.output


def test_from_scores_refuses_what_does_not_apply(scored, tmp_path):
    ck, rec, out, _ = scored
    r = invoke(["detect", "--from-scores", str(out), "-f", str(ck), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "-f does not apply with --from-scores" in r.output
    r = invoke(["detect", "--from-scores", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "no detect.json" in r.output
    no_scores = tmp_path / "plain"
    assert invoke(["detect", "-f", str(ck), str(rec), "--out", str(no_scores), "--quiet"]).exit_code == 0
    r = invoke(["detect", "--from-scores", str(no_scores), "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "scores.csv: missing" in r.output and "--scores" in r.output
    r = invoke(["detect", "--out", str(tmp_path / "w")])
    assert r.exit_code == 2 and "give -f RUN and RECORDINGS" in r.output


def test_evaluate_calibrate_writes_thresholds_detect_reads(scored, tmp_path):
    ck, rec, out, ann = scored
    ev = tmp_path / "ev"
    r = invoke(["evaluate", str(out), str(ann), "--out", str(ev), "--calibrate", "precision=0.9"])
    assert r.exit_code == 0, r.output
    th = read_thresholds(str(ev / "thresholds.yaml"), ["noise", "tone"])
    assert 0.0 <= th["tone"] <= 1.0 and "thresholds: tone" in r.output
    assert (ev / "thresholds.yaml").read_text().startswith("# convnet evaluate --calibrate precision=0.9")
    again = tmp_path / "calibrated"
    r = invoke(["detect", "--from-scores", str(out), "--threshold", str(ev / "thresholds.yaml"), "--out", str(again)])
    assert r.exit_code == 0, r.output
    r = invoke(["detect", "-f", str(ck), str(rec), "--out", str(tmp_path / "d"), "--quiet", "--threshold",
                str(ev / "thresholds.yaml")])
    assert r.exit_code == 0, r.output
    assert _rows(tmp_path / "d" / "detections.csv") == _rows(again / "detections.csv")
    r = invoke(["evaluate", str(out), str(ann), "--out", str(ev), "--calibrate", "recall=0.9"])
    assert r.exit_code == 2 and "--calibrate 'recall=0.9'" in r.output


def test_evaluate_leaves_out_annotations_reviewed_false_or_unsure(tmp_path):
    from convnet_cli.detect.evaluate import load_pair

    det = tmp_path / "det.csv"
    det.write_text("filename,start,end,label,score\nr.wav,1,2,call,0.9\nr.wav,5,6,call,0.8\n")
    ann = tmp_path / "ann.txt"
    ann.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tBegin File\tClass\tVerdict\n"
                   "1\tSpectrogram 1\t1\t1\t2\tr.wav\tcall\ttrue\n"
                   "2\tSpectrogram 1\t1\t5\t6\tr.wav\tcall\tfalse\n"
                   "3\tSpectrogram 1\t1\t8\t9\tr.wav\tcall\tunsure\n")
    dets, anns, wanted, _ = load_pair(str(det), str(ann))
    res = evaluate(dets, anns, wanted).result["classes"]["call"]
    assert (res["tp"], res["fp"], res["fn"]) == (1, 1, 0)
