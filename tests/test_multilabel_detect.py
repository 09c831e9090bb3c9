"""detect and evaluate with a multi-label network (SPEC 17): every class on its own, so events of different
classes overlap in time; no background class; evaluate scores each class (tests/multilabel_detector.py's
hand-made two-tone detector on synthesised recordings)."""
import csv
import json

import pytest

from tests.helpers import invoke
from tests.multilabel_detector import two_tone_checkpoint, write_recording

# a low call with a high one inside it, a high and a low that overlap in part, and a lone one of each
CALLS = [(5.0, 9.0, "low"), (6.0, 8.0, "high"), (15.0, 17.0, "high"), (16.5, 19.0, "low"), (25.0, 27.0, "low"),
         (31.0, 33.0, "high")]


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml_detect")
    ck = two_tone_checkpoint(root / "ck.npz")
    write_recording(root / "rec" / "chorus.wav", 40, CALLS, seed=11)
    (root / "ann.csv").write_text("filename,start,end,label\n"
                                  + "".join(f"chorus.wav,{b},{e},{c}\n" for b, e, c in CALLS))
    r = invoke(["detect", "-f", ck, str(root / "rec"), "--out", str(root / "out"), "--quiet", "--scores"])
    assert r.exit_code == 0, r.output
    return root, ck


def test_overlapping_calls_of_two_classes_are_both_detected(detected):
    root, _ = detected
    dets = _rows(root / "out" / "detections.csv")
    by_class = {c: [(float(d["begin_s"]), float(d["end_s"])) for d in dets if d["class"] == c] for c in ("high", "low")}
    assert len(by_class["low"]) == 3 and len(by_class["high"]) == 3, dets
    for b, e, c in CALLS:   # every call has an event of its class around it
        assert any(db <= b + 0.6 and de >= e - 0.6 for db, de in by_class[c]), (b, e, c, by_class[c])
    # the low event at 5-9 s and the high one at 6-8 s overlap in time
    assert any(hb < le and lb < he for hb, he in by_class["high"] for lb, le in by_class["low"])
    settings = json.loads((root / "out" / "detect.json").read_text())
    assert settings["classes"] == ["high", "low"] and settings["multi_label"] is True
    table = (root / "out" / "chorus.selections.txt").read_text().splitlines()
    assert len(table) == 1 + 6 and {line.split("\t")[8] for line in table[1:]} == {"high", "low"}


def test_evaluate_scores_each_class_of_a_multilabel_detect(detected, tmp_path):
    root, _ = detected
    r = invoke(["evaluate", str(root / "out"), str(root / "ann.csv"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "evaluation.json").read_text())
    assert sorted(ev["classes"]) == ["high", "low"]
    for c in ("high", "low"):
        got = ev["classes"][c]
        assert (got["tp"], got["fp"], got["fn"]) == (3, 0, 0), (c, got)
    assert ev["overall"]["tp"] == 6 and ev["overall"]["recall"] == 1.0


def test_a_class_named_like_background_is_reported_by_a_multilabel_net(tmp_path):
    """'noise' is a class of its own in a multi-label set (no background class): detect reports it."""
    ck = two_tone_checkpoint(tmp_path / "ck.npz", label_names=["high", "noise"])
    write_recording(tmp_path / "rec" / "r.wav", 12, [(2.0, 4.0, "low"), (7.0, 9.0, "high")], seed=3)
    r = invoke(["detect", "-f", ck, str(tmp_path / "rec"), "--out", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert sorted(d["class"] for d in _rows(tmp_path / "out" / "detections.csv")) == ["high", "noise"]


def test_from_scores_keeps_every_class_of_a_multilabel_run(detected, tmp_path):
    root, _ = detected
    r = invoke(["detect", "--from-scores", str(root / "out"), "--out", str(tmp_path / "re")])
    assert r.exit_code == 0, r.output
    assert _rows(tmp_path / "re" / "detections.csv") == _rows(root / "out" / "detections.csv")
    r = invoke(["detect", "--from-scores", str(root / "out"), "--out", str(tmp_path / "low"), "--classes", "low"])
    assert r.exit_code == 0, r.output
    assert [d["class"] for d in _rows(tmp_path / "low" / "detections.csv")] == ["low"] * 3


def test_review_of_a_multilabel_detect_feeds_absent_classes_back(detected, tmp_path):
    """review samples every class of a multi-label run, overlapping events included; a 'false' verdict on a
    high event makes 'high' absent (0) in the windows it covers in make-batches --multi-label, while the low
    call under it stays present (SPEC 17, 18)."""
    import yaml

    from convnet_cli.review.build import prepare
    from tests.multilabel_detector import FEATURES, batch_truth

    root, _ = detected
    review = prepare(str(root / "out"), str(tmp_path / "rv"), select="top", progress=False, echo=lambda m: None)
    items = {(it.label, round(it.begin), round(it.end)): it for it in review.items}
    assert {c for c, _, _ in items} == {"high", "low"} and len(items) == 6, sorted(items)
    high = [it for it in review.items if it.label == "high" and it.begin < 7.0 < it.end]
    low = [it for it in review.items if it.label == "low" and it.begin < 7.0 < it.end]
    assert len(high) == 1 and len(low) == 1        # the high call inside the low one: both in the sample
    review.store.record(high[0].id, "false")
    review.store.record(low[0].id, "true")

    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "calls.csv").write_text("filename,start,end,label\n"
                                      + "".join(f"chorus.wav,{b},{e},{c}\n" for b, e, c in CALLS if b > 10))
    (tables / "verdicts.selections.txt").write_bytes((tmp_path / "rv" / "verdicts.selections.txt").read_bytes())
    feats = tmp_path / "f.yaml"
    feats.write_text(yaml.safe_dump(FEATURES))
    out = tmp_path / "b"
    r = invoke(["make-batches", str(root / "rec"), str(out), "--annotations", str(tables), "--multi-label",
                "--features", str(feats), "--window-hop", "0.5", "--test-fraction", "0", "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    bs, names, truth = batch_truth(out)
    k = {c: bs.label_names.index(c) for c in ("high", "low")}
    starts = {float(n.rsplit("@", 1)[1]): row for n, row in zip(names, truth)}
    hb, he = high[0].begin, high[0].end
    inside = [s for s in starts if hb <= s and s + 1.0 <= he]          # windows wholly inside the false event
    assert inside, sorted(starts)
    for s in inside:
        assert starts[s][k["high"]] == 0, (s, starts[s])               # verified absent
        assert starts[s][k["low"]] == 1, (s, starts[s])                # the verified low call is still there
