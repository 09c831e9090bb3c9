"""info and show on multi-label batch folders and runs (SPEC 17): cases per class, co-occurrence, cases with
0 / 1 / 2+ classes and unknown entries; show --confusion gives per-class precision-recall curves and class
co-occurrence instead of a confusion matrix."""
import json

import numpy as np
import pytest

from tests.helpers import invoke
from tests.multilabel_detector import LABELS, batch_truth, make_multilabel_batches, two_tone_checkpoint


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml_info")
    return make_multilabel_batches(root, test_fraction=0.5, batch_size=20)


def _expected(truth):
    on = (truth == 1).astype(int)
    per = on.sum(axis=1)
    return {"unknown": [int(v) for v in (truth == 255).sum(axis=0)], "cooccurrence": (on.T @ on).tolist(),
            "cardinality": {"0": int((per == 0).sum()), "1": int((per == 1).sum()), "2+": int((per >= 2).sum())}}


def test_info_json_counts_classes_cooccurrence_cardinality_and_unknown(batches):
    bs, _, truth = batch_truth(batches)
    r = invoke(["info", batches, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["multi_label"]["all"] == _expected(truth)
    assert d["multi_label"]["all"]["unknown"] != [0, 0] and d["multi_label"]["all"]["cardinality"]["2+"] > 0
    assert d["per_class"]["all"]["per_class"] == [int(v) for v in (truth == 1).sum(axis=0)]
    assert d["per_class"]["all"]["cases"] == len(truth)
    # per split, from the batch files of each range
    for split, rng in (("train", bs.train_range), ("test", bs.test_range)):
        part = np.concatenate([bs.read_batch(b)[2].matrix for b in rng])
        assert d["multi_label"][split] == _expected(part)
        assert d["per_class"][split]["cases"] == len(part)
    assert sum(b["cases"] for b in d["batches"]) == len(truth)


def test_info_text_of_a_multilabel_folder_and_file(batches):
    _, _, truth = batch_truth(batches)
    r = invoke(["info", batches])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "multi-label" in out and "co-occurrence" in out and "unknown" in out
    both = int(((truth == 1).sum(axis=1) >= 2).sum())
    rows = [line.split() for line in out.splitlines()]
    (two_plus,) = [row for row in rows if row[:1] == ["2+"]]           # classes  train  test  total
    assert int(two_plus[-1]) == both
    on = (truth == 1).astype(int)
    co = on.T @ on
    high_row = next(row for row in rows if row[:1] == ["high"] and len(row) == 3)   # the co-occurrence row
    assert [int(v) for v in high_row[1:]] == list(co[0])
    r = invoke(["info", f"{batches}/data_batch_1"])
    assert r.exit_code == 0 and "present" in r.output and "unknown" in r.output


def test_single_label_info_has_no_multilabel_part(tiny_batches):
    r = invoke(["info", str(tiny_batches), "--json"])
    assert r.exit_code == 0
    assert json.loads(r.output)["multi_label"] is None
    assert "co-occurrence" not in invoke(["info", str(tiny_batches)]).output


def test_show_confusion_on_a_multilabel_run(batches, tmp_path):
    pytest.importorskip("matplotlib", reason="show needs matplotlib (the plot extra)")
    from convnet_cli.metrics import average_precision
    from convnet_cli.predict.predict import predict_batches
    from convnet_cli.show.run import multilabel_figures

    run = tmp_path / "run"
    run.mkdir()
    ck = two_tone_checkpoint(run / "best.npz")
    r = invoke(["show", "-f", str(run), "--confusion", "--data-path", batches, "--out-dir", str(tmp_path / "figs")])
    assert r.exit_code == 0, r.output
    assert "no confusion matrix" in r.output
    for name in ("pr-curves.png", "cooccurrence.png"):
        assert (tmp_path / "figs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "figs" / "confusion.png").exists()
    # the figures' numbers: each class's AP over its known test entries, co-occurrence of the test cases
    preds = predict_batches(ck, batches)
    curves, true_co, pred_co = multilabel_figures(preds)
    t = preds.targets
    for c, name in enumerate(LABELS):
        known = t[:, c] != 255
        assert curves[name]["ap"] == pytest.approx(average_precision(preds.probs[known, c], t[known, c] == 1))
    on = (t == 1).astype(int)
    assert np.array_equal(true_co, on.T @ on)
    assert np.trace(pred_co) == int(((preds.probs >= 0.5) & (t != 255)).sum())


def test_show_only_errors_is_refused_for_a_multilabel_run(batches, tmp_path):
    pytest.importorskip("matplotlib", reason="show needs matplotlib (the plot extra)")
    run = tmp_path / "run"
    run.mkdir()
    two_tone_checkpoint(run / "best.npz")
    r = invoke(["show", "-f", str(run), "--preds", "fc1", "--only-errors", "--data-path", batches,
                "--out-dir", str(tmp_path / "figs")])
    assert r.exit_code == 2 and "multi-label" in r.output
