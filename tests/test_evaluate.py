"""evaluate's matching and metrics against cases computed by hand (convnet_cli/detect/evaluate.py)."""
import json

import pytest

from convnet_cli.detect.evaluate import Interval, evaluate, format_table, match, overlap_fraction, write_json


def I(b, e, label="c", score=None):
    return Interval(b, e, label, score)


def test_overlap_is_a_fraction_of_the_shorter():
    assert overlap_fraction(0, 1, 0.5, 3) == pytest.approx(0.5)
    assert overlap_fraction(0, 10, 2, 3) == pytest.approx(1.0)
    assert overlap_fraction(0, 1, 1, 2) == 0.0


def test_greedy_matching_by_score():
    anns = [I(0, 1), I(2, 3)]
    # the 0.6 detection overlaps the first annotation best but comes after the 0.9 one, which takes it
    dets = [I(0.2, 0.9, score=0.6), I(0, 1, score=0.9), I(2.6, 3.6, score=0.5)]
    scored, fn = match(dets, anns, 0.5)
    assert scored == [(0.9, True), (0.6, False), (0.5, False)]  # 2.6-3.6 overlaps 2-3 by 0.4 < 0.5
    assert fn == 1
    scored, fn = match(dets, anns, 0.35)
    assert scored == [(0.9, True), (0.6, False), (0.5, True)] and fn == 0


def test_hand_computed_case():
    """Annotations A1 [0,1], A2 [2,3], A3 [5,6] of class c on one recording, and a [10,11] of class d.
    Detections: 0.9 on A1 (TP), 0.8 on A2 (TP), 0.7 on nothing (FP), 0.6 on A1 again (FP), and a d-detection
    0.95 on the d annotation (TP).
    Class c: TP 2, FP 2, FN 1; P = 1/2, R = 2/3, F1 = 4/7. Curve over the score threshold:
      t=0.9: P 1,   R 1/3;  t=0.8: P 1, R 2/3;  t=0.7: P 2/3, R 2/3;  t=0.6: P 1/2, R 2/3
    AP = 1/3*1 + 1/3*1 = 2/3. Lowest threshold with P >= 0.9: 0.8, recall there 2/3.
    Overall (pooled): t=0.95 P1 R1/4; 0.9 P1 R2/4; 0.8 P1 R3/4; 0.7 P3/4; 0.6 P3/5 -> AP 3/4, thr 0.8, R 3/4."""
    anns = {"r": [I(0, 1), I(2, 3), I(5, 6), I(10, 11, "d")]}
    dets = {"r": [I(0, 1, score=0.9), I(2.1, 3, score=0.8), I(8, 9, score=0.7), I(0.2, 0.9, score=0.6),
                  I(10, 11, "d", 0.95)]}
    ev = evaluate(dets, anns, ["c", "d"], 0.5, 0.9)
    c = ev.result["classes"]["c"]
    assert (c["tp"], c["fp"], c["fn"]) == (2, 2, 1)
    assert c["precision"] == pytest.approx(0.5) and c["recall"] == pytest.approx(2 / 3)
    assert c["f1"] == pytest.approx(4 / 7)
    assert c["average_precision"] == pytest.approx(2 / 3)
    assert c["threshold_at_precision"] == pytest.approx(0.8) and c["recall_at_threshold"] == pytest.approx(2 / 3)
    o = ev.result["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (3, 2, 1)
    assert o["average_precision"] == pytest.approx(0.75)
    assert o["threshold_at_precision"] == pytest.approx(0.8) and o["recall_at_threshold"] == pytest.approx(0.75)
    assert set(ev.result) == {"classes", "overall", "min_overlap"}
    assert set(c) == {"tp", "fp", "fn", "precision", "recall", "f1", "average_precision",
                      "threshold_at_precision", "recall_at_threshold"}
    assert "overall" in format_table(ev.result)


def test_undefined_ratios_are_null_and_json_is_written(tmp_path):
    ev = evaluate({"r": []}, {"r": [I(0, 1)]}, ["c"], 0.5, 0.9)
    c = ev.result["classes"]["c"]
    assert (c["tp"], c["fp"], c["fn"]) == (0, 0, 1)
    assert c["precision"] is None and c["recall"] == 0.0 and c["average_precision"] == 0.0
    assert c["threshold_at_precision"] is None
    path = write_json(ev.result, str(tmp_path))
    assert json.load(open(path))["min_overlap"] == 0.5


# ---- the command, on detect's output --------------------------------------------------------------------

def _detect(tmp_path, layout):
    from tests.detect_fixtures import tone_checkpoint, write_recording
    from tests.helpers import invoke

    ck = tone_checkpoint(tmp_path / "best.npz")
    for rel, tones in layout.items():
        (tmp_path / "rec" / rel).parent.mkdir(parents=True, exist_ok=True)
        write_recording(tmp_path / "rec" / rel, 30, tones, sr=1000)
    out = tmp_path / "det"
    assert invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(out), "--quiet"]).exit_code == 0
    return out


def test_evaluate_cli_on_a_detect_out_dir(tmp_path):
    from tests.helpers import invoke

    out = _detect(tmp_path, {"s1/x.wav": [(5, 7), (20, 22)], "s2/x.wav": [(10, 12)]})
    ann = tmp_path / "ann.csv"
    # s1/x.wav: both tones annotated plus one call the detector cannot hear (a 25 s 'tone' with no tone);
    # s2/x.wav: its tone; other.wav was never run through detect and must not count
    ann.write_text("filename,start,end,label\ns1/x.wav,5,7,tone\ns1/x.wav,20,22,tone\ns1/x.wav,25,26,tone\n"
                   "s2/x.wav,10,12,tone\nother.wav,1,2,tone\n")
    r = invoke(["evaluate", str(out), str(ann), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    res = json.load(open(tmp_path / "ev" / "evaluation.json"))
    t = res["classes"]["tone"]
    assert (t["tp"], t["fp"], t["fn"]) == (3, 0, 1)
    assert t["precision"] == 1.0 and t["recall"] == pytest.approx(0.75)
    assert res["overall"]["tp"] == 3 and list(res["classes"]) == ["tone"]
    assert "not run through detect" in r.output and "overall" in r.output
    assert (tmp_path / "ev" / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    # the same through detections.csv, and with Raven tables named after their recordings on the other side
    raven_dir = tmp_path / "raven"
    raven_dir.mkdir()
    (raven_dir / "x.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n"
        "1\tSpectrogram 1\t1\t10\t12\ttone\n")
    r = invoke(["evaluate", str(out / "detections.csv"), str(ann), "--out", str(tmp_path / "ev2")])
    assert r.exit_code == 0 and json.load(open(tmp_path / "ev2" / "evaluation.json"))["classes"]["tone"]["tp"] == 3
    # 'x' fits s1/x.wav and s2/x.wav: refused with the fix
    r = invoke(["evaluate", str(out), str(raven_dir), "--out", str(tmp_path / "ev3")])
    assert r.exit_code == 2 and "relative path" in r.output


def test_pairing_by_relative_path_else_by_key():
    from convnet_cli.detect.evaluate import pair_recordings

    dets = ["s1/x.wav", "s2/x.wav", "y.flac"]
    assert pair_recordings(dets, ["s2/x.wav", "/data/s1/x.wav", "y", "site9/y.flac", "z.wav"]) == {
        "s2/x.wav": "s2/x.wav", "/data/s1/x.wav": "s1/x.wav", "y": "y.flac", "site9/y.flac": "y.flac"}


def test_evaluate_notes_annotation_labels_it_does_not_score(tmp_path):
    from tests.helpers import invoke

    out = _detect(tmp_path, {"x.wav": [(5, 7)]})
    ann = tmp_path / "ann.csv"
    ann.write_text("filename,start,end,label\nx.wav,5,7,Tone\n")
    r = invoke(["evaluate", str(out), str(ann), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0 and "annotation label(s) Tone are not among the classes scored (tone)" in r.output
    t = json.load(open(tmp_path / "ev" / "evaluation.json"))["classes"]["tone"]
    assert (t["tp"], t["fp"], t["fn"]) == (0, 1, 0)
    r = invoke(["evaluate", str(out), str(ann), "--out", str(tmp_path / "ev"), "--classes", "tone,Tone"])
    res = json.load(open(tmp_path / "ev" / "evaluation.json"))
    assert r.exit_code == 0 and res["classes"]["Tone"]["fn"] == 1 and res["overall"]["fn"] == 1


def test_evaluate_a_folder_of_raven_tables_as_detections(tmp_path):
    """Tables alone (copied out of an OUT_DIR, or from another tool with a Score column): the combined table
    is not counted twice and skipped.txt is not a table."""
    import shutil

    from tests.helpers import invoke

    out = _detect(tmp_path, {"x.wav": [(5, 7), (20, 22)]})
    tables = tmp_path / "tables"
    tables.mkdir()
    shutil.copy(out / "x.selections.txt", tables)
    (tables / "skipped.txt").write_text("broken.wav\tcannot decode\n")
    raven_combined = invoke(["detect", "-f", str(tmp_path / "best.npz"), str(tmp_path / "rec"), "--out",
                             str(tmp_path / "c"), "--quiet", "--combined"])
    assert raven_combined.exit_code == 0
    shutil.copy(tmp_path / "c" / "detections.selections.txt", tables)
    ann = tmp_path / "ann.csv"
    ann.write_text("filename,start,end,label\nx.wav,5,7,tone\nx.wav,20,22,tone\n")
    r = invoke(["evaluate", str(tables), str(ann), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    t = json.load(open(tmp_path / "ev" / "evaluation.json"))["classes"]["tone"]
    assert (t["tp"], t["fp"], t["fn"]) == (2, 0, 0)
