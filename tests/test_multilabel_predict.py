"""predict on multi-label networks (SPEC 17): ';'-joined predicted and true classes at a threshold, the
per-class report (AP, ROC AUC, P/R/F1, support, macro and micro mAP, cardinality) with unknown targets left
out; on batch files made by make-batches --annotations --multi-label from synthesised recordings, and on audio.
"""
import csv
import json
import os

import numpy as np
import pytest

from convnet_cli.metrics import average_precision, multilabel_report, roc_auc
from tests.helpers import invoke
from tests.multilabel_detector import LABELS, batch_truth, make_multilabel_batches, two_tone_checkpoint, write_recording

def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two recordings with overlapping calls, their annotation CSV, multi-label batches of their windows, and
    the two-tone checkpoint."""
    root = tmp_path_factory.mktemp("ml_predict")
    make_multilabel_batches(root)
    return root, two_tone_checkpoint(root / "ck.npz")


def test_predict_csv_joins_classes_at_the_threshold(workspace, tmp_path):
    root, ck = workspace
    bs, names, truth = batch_truth(root / "batches")
    out = tmp_path / "p.csv"
    r = invoke(["predict", "-f", ck, "--data-path", str(root / "batches"), "--test-range",
                ",".join(str(b) for b in bs.batch_numbers), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert rows[0] == ["filename", "predicted"] + LABELS + ["true"]
    body = rows[1:]
    assert [row[0] for row in body] == names
    both = 0
    for row, t in zip(body, truth):
        probs = [float(v) for v in row[2:4]]
        want = ";".join(c for c, p in zip(LABELS, probs) if p >= 0.5)
        assert row[1] == want
        assert row[4] == ";".join(c for c, v in zip(LABELS, t) if v == 1)
        both += row[4] == "high;low"
    assert both >= 2, "the overlapping calls give windows holding both classes"
    # the net finds both classes of a window where both sound
    both_rows = [row for row in body if row[4] == "high;low"]
    assert sum(row[1] == "high;low" for row in both_rows) >= len(both_rows) - 1


def test_threshold_per_class_and_from_a_file(workspace, tmp_path):
    root, ck = workspace
    bs, _, _ = batch_truth(root / "batches")
    rng = ",".join(str(b) for b in bs.batch_numbers)
    base = ["predict", "-f", ck, "--data-path", str(root / "batches"), "--test-range", rng]
    assert invoke(base + ["--out", str(tmp_path / "all.csv"), "--threshold", "high=1.0,0.0"]).exit_code == 0
    for row in _rows(tmp_path / "all.csv")[1:]:
        high = float(row[2])
        assert row[1] == ("high;low" if high >= 1.0 else "low")
    (tmp_path / "thresholds.yaml").write_text("low: 1.0\n")
    assert invoke(base + ["--out", str(tmp_path / "f.csv"), "--threshold", str(tmp_path / "thresholds.yaml")]) \
        .exit_code == 0
    for row in _rows(tmp_path / "f.csv")[1:]:
        probs = [float(v) for v in row[2:4]]
        assert row[1] == ";".join(c for c, p, t in zip(LABELS, probs, (0.5, 1.0)) if p >= t)
    r = invoke(base + ["--out", str(tmp_path / "x.csv"), "--threshold", "hihg=0.3"])
    assert r.exit_code == 2 and "hihg" in r.output and "did you mean 'high'" in r.output
    assert not (tmp_path / "x.csv").exists()


def test_report_per_class_metrics_leave_unknown_targets_out(workspace, tmp_path):
    root, ck = workspace
    bs, _, truth = batch_truth(root / "batches")
    assert (truth == 255).any(), "the short call makes unknown entries"
    out = tmp_path / "p.csv"
    r = invoke(["predict", "-f", ck, "--data-path", str(root / "batches"), "--test-range",
                ",".join(str(b) for b in bs.batch_numbers), "--out", str(out), "--report", "--threshold", "0.4"])
    assert r.exit_code == 0, r.output
    for word in ("macro mAP", "micro mAP", "ROC AUC", "cases with 0 / 1 / 2+ classes", "unknown entries"):
        assert word in r.output
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["multi_label"] is True and rep["cases"] == len(truth)
    probs = np.array([[float(v) for v in row[2:4]] for row in _rows(out)[1:]])
    for c, name in enumerate(LABELS):
        known = truth[:, c] != 255
        y = truth[known, c] == 1
        pc = rep["per_class"][name]
        assert pc["support"] == int(y.sum()) and pc["unknown"] == int((~known).sum())
        assert pc["average_precision"] == pytest.approx(average_precision(probs[known, c], y), abs=1e-5)
        assert pc["roc_auc"] == pytest.approx(roc_auc(probs[known, c], y.astype(int)), abs=1e-5)
        p = probs[known, c] >= 0.4
        tp = int((p & y).sum())
        assert pc["precision"] == pytest.approx(tp / max(1, p.sum()))
        assert pc["recall"] == pytest.approx(tp / y.sum())
        assert pc["threshold"] == 0.4
        assert pc["average_precision"] > 0.9
    assert rep["unknown_entries"] == int((truth == 255).sum())
    present = (truth == 1).sum(axis=1)
    assert rep["cardinality"]["true"] == {"0": int((present == 0).sum()), "1": int((present == 1).sum()),
                                          "2+": int((present >= 2).sum())}
    assert rep["macro_map"] == pytest.approx(np.mean([rep["per_class"][n]["average_precision"] for n in LABELS]))
    known = truth != 255
    assert rep["micro_map"] == pytest.approx(average_precision(probs[known], truth[known] == 1), abs=1e-5)


def test_multilabel_report_by_hand():
    """Figures on a small case worked out by hand; an unknown entry changes nothing."""
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8], [0.4, 0.3]])
    present = np.array([[1, 0], [0, 1], [0, 1], [1, 0]])
    known = np.ones((4, 2), bool)
    rep = multilabel_report(probs, present, known, ["a", "b"], [0.5, 0.5])
    a, b = rep["per_class"]["a"], rep["per_class"]["b"]
    # a: ranking 0.9(+) 0.6(-) 0.4(+) 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3
    assert a["average_precision"] == pytest.approx(0.5 + 1 / 3)
    assert a["roc_auc"] == pytest.approx(3 / 4)
    assert (a["precision"], a["recall"]) == (0.5, 0.5)
    assert b["average_precision"] == pytest.approx(1.0) and b["roc_auc"] == pytest.approx(1.0)
    assert (b["precision"], b["recall"], b["f1"]) == (1.0, 1.0, 1.0)
    assert rep["macro_map"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 2)
    assert rep["micro"] == {"precision": pytest.approx(3 / 4), "recall": pytest.approx(3 / 4), "f1": pytest.approx(3 / 4)}
    assert rep["cardinality"]["predicted"] == {"0": 1, "1": 2, "2+": 1}
    assert rep["cardinality"]["true"] == {"0": 0, "1": 4, "2+": 0}
    assert rep["exact_match"] == pytest.approx(2 / 4)
    # one more case, with a confident wrong score, whose entries are unknown: nothing moves
    rep2 = multilabel_report(np.r_[probs, [[0.99, 0.99]]], np.r_[present, [[0, 0]]],
                             np.r_[known, [[False, False]]], ["a", "b"], [0.5, 0.5])
    for key in ("macro_map", "micro_map", "micro", "exact_match"):
        assert rep2[key] == rep[key]
    assert rep2["unknown_entries"] == 2 and rep2["per_class"]["a"]["unknown"] == 1


def test_predict_audio_of_a_multilabel_net(workspace, tmp_path):
    root, ck = workspace
    clips = tmp_path / "clips"
    write_recording(clips / "both.wav", 1.0, [(0, 1, "low"), (0, 1, "high")], seed=5)
    write_recording(clips / "low.wav", 1.0, [(0, 1, "low")], seed=6)
    write_recording(clips / "none.wav", 1.0, [], seed=7)
    out = tmp_path / "a.csv"
    r = invoke(["predict", "-f", ck, str(clips), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert rows[0] == ["filename", "predicted"] + LABELS       # no truth: no `true` column
    assert {row[0]: row[1] for row in rows[1:]} == {"both.wav": "high;low", "low.wav": "low", "none.wav": ""}
    r = invoke(["predict", "-f", ck, str(clips), "--out", str(out), "--report"])
    assert r.exit_code == 2 and "--multi-label" in r.output


def test_multi_label_read_from_the_batches_the_net_was_trained_on(workspace, tmp_path):
    """A checkpoint that does not record multi_label is multi-label when its batch folder says so."""
    root, _ = workspace
    ck = two_tone_checkpoint(tmp_path / "ck.npz", record_multi_label=False)
    from convnet_cli.predict.predict import checkpoint_multi_label
    from convnet_cli.train.checkpoint import load_checkpoint

    state = load_checkpoint(ck).state
    assert not checkpoint_multi_label(state)
    assert checkpoint_multi_label(dict(state, data_path=str(root / "batches")))
    assert not checkpoint_multi_label(dict(state, data_path=str(root / "batches"), multi_label=False))


def test_single_label_predict_refuses_threshold_and_multilabel_batches(workspace, tmp_path):
    from tests.detect_fixtures import tone_checkpoint

    root, _ = workspace
    ck = tone_checkpoint(tmp_path / "tone.npz")
    r = invoke(["predict", "-f", ck, "--data-path", str(root / "batches"), "--test-range", "1",
                "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2 and "multi-label" in r.output and "single-label" in r.output
    clip = write_recording(tmp_path / "c" / "x.wav", 1.0, [], seed=1)
    r = invoke(["predict", "-f", ck, clip, "--out", str(tmp_path / "p.csv"), "--threshold", "0.3"])
    assert r.exit_code == 2 and "--threshold" in r.output and "single-label" in r.output
    r = invoke(["predict", "-f", ck, clip, "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0
    assert _rows(tmp_path / "p.csv")[0] == ["filename", "predicted", "noise", "tone"]
    assert os.path.exists(tmp_path / "p.csv")


def test_a_trained_multilabel_run_predicts_as_its_training_tests(tmp_path):
    """make-batches --labels CSV --multi-label -> train (cost.bce) -> predict --report: predict's per-class AP
    on the test batches is the AP the run logged for its best test (same net, same cases), `true` is each
    clip's set from the labels CSV, and export --verify agrees in ONNX Runtime."""
    from tests.multilabel_fixtures import CLASSES, make_multilabel_clips

    sets = make_multilabel_clips(str(tmp_path), n=40, seed=0)
    r = invoke(["make-batches", str(tmp_path / "clips"), str(tmp_path / "batches"), "--labels",
                str(tmp_path / "labels.csv"), "--multi-label", "--features", str(tmp_path / "features.yaml"),
                "--batch-size", "10", "--test-fraction", "0.25", "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    r = invoke(["train", "--data-path", str(tmp_path / "batches"), "--save-path", str(tmp_path / "runs"),
                "--layer-def", str(tmp_path / "layers.yaml"), "--layer-params", str(tmp_path / "params.yaml"),
                "--mini", "4", "--epochs", "4"])
    assert r.exit_code == 0, r.output
    (run,) = [tmp_path / "runs" / d for d in os.listdir(tmp_path / "runs")]
    best = json.loads(np.load(run / "best.npz")["__state__"].item())["best"]
    logged = next(rec for rec in map(json.loads, open(run / "train_log.jsonl"))
                  if rec["type"] == "test" and rec["epoch"] == best["epoch"] and rec["batch"] == best["batch"])
    out = tmp_path / "p.csv"
    r = invoke(["predict", "-f", str(run), "--data-path", str(tmp_path / "batches"), "--out", str(out), "--report"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["labels"] == list(CLASSES)
    for c in CLASSES:
        want, got = logged["ap"][c], rep["per_class"][c]["average_precision"]
        assert (want is None and got is None) or got == pytest.approx(want, abs=1e-5), (c, want, got)
    assert rep["macro_map"] == pytest.approx(logged["map"], abs=1e-5)
    rows = _rows(out)
    assert rows[0] == ["filename", "predicted", *CLASSES, "true"]
    for row in rows[1:]:
        assert row[-1] == ";".join(sorted(sets[os.path.basename(row[0])]))
    info = invoke(["info", str(run)])
    assert info.exit_code == 0 and "multi-label: one logistic output per class" in info.output
    assert f"map {logged['map']:.4f} at {best['epoch']}.{best['batch']} (by map" in info.output
    d = json.loads(invoke(["info", str(run), "--json"]).output)
    assert d["multi_label"] is True and d["best"]["map"] == pytest.approx(logged["map"])
    pytest.importorskip("onnxruntime", reason="export --verify runs the model in ONNX Runtime")
    r = invoke(["export", "-f", str(run), "--out", str(tmp_path / "m.onnx"), "--verify"])
    assert r.exit_code == 0 and "multi-label" in r.output, r.output


def test_a_multilabel_net_on_single_label_batches(tmp_path):
    """SPEC 17: a multi-label network given single-label batches is refused in one line naming the fix
    (make-batches --multi-label); batches of other classes are refused too."""
    import yaml

    from tests.multilabel_detector import FEATURES

    for label in LABELS:
        for i in range(3):
            write_recording(tmp_path / "clips" / label / f"{label}{i}.wav", 1.0, [(0, 1, label)], seed=20 + i)
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(FEATURES))
    r = invoke(["make-batches", str(tmp_path / "clips"), str(tmp_path / "single"), "--features",
                str(tmp_path / "features.yaml"), "--test-fraction", "0", "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    ck = two_tone_checkpoint(tmp_path / "ck.npz")
    out = tmp_path / "p.csv"
    r = invoke(["predict", "-f", ck, "--data-path", str(tmp_path / "single"), "--test-range", "1", "--out", str(out),
                "--report"])
    assert r.exit_code == 2 and "single-label" in r.output and "make-batches --multi-label" in r.output, r.output
    assert not out.exists()
    with open(tmp_path / "labels.csv", "w") as f:
        f.write("file,labels\n" + "".join(f"{c}/{c}{i}.wav,{c}\n" for c in LABELS for i in range(3)))
    r = invoke(["make-batches", str(tmp_path / "clips"), str(tmp_path / "multi"), "--labels",
                str(tmp_path / "labels.csv"), "--multi-label", "--features", str(tmp_path / "features.yaml"),
                "--test-fraction", "0", "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    r = invoke(["predict", "-f", ck, "--data-path", str(tmp_path / "multi"), "--test-range", "1", "--out", str(out),
                "--report"])
    assert r.exit_code == 0, r.output
    rows = _rows(out)[1:]
    assert len(rows) == 6 and all(row[1] == row[-1] == row[0].split("/")[0] for row in rows)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["cardinality"]["true"] == {"0": 0, "1": 6, "2+": 0} and rep["unknown_entries"] == 0
    ck2 = two_tone_checkpoint(tmp_path / "ck2.npz", label_names=["hi", "lo"])
    r = invoke(["predict", "-f", ck2, "--data-path", str(tmp_path / "multi"), "--test-range", "1",
                "--out", str(out)])
    assert r.exit_code == 2 and "--label-names hi,lo" in r.output


def test_a_multilabel_network_refuses_single_label_batches(workspace, tmp_path):
    """SPEC 17: a multi-label net given single-label batches is refused in one line that says what to change."""
    root, ck = workspace
    out = tmp_path / "single"
    r = invoke(["make-batches", str(root / "rec"), str(out), "--annotations", str(root / "ann.csv"),
                "--features", str(root / "features.yaml"), "--window-hop", "0.5", "--test-fraction", "0",
                "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    r = invoke(["predict", "-f", ck, "--data-path", str(out), "--test-range", "1", "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2, r.output
    assert "single-label" in r.output and "multi-label" in r.output and "--multi-label" in r.output
    assert "Traceback" not in r.output and not os.path.exists(tmp_path / "p.csv")
