"""train on multi-label batches (SPEC 17) through the CLI, on generated clips holding sets of tones: test lines
with cost and mAP, per-class AP in train_log.jsonl, --best-by map (the default there), --balance by
data/balance.py's multilabel_balanced_order, mixup mixing the targets, exact resume, and the one-line
refusals of a net or a flag that does not fit the batches."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from tests.helpers import invoke
from tests.multilabel_fixtures import CLASSES, make_multilabel_clips


@pytest.fixture(scope="module")
def ml(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    sets = make_multilabel_clips(str(root), n=40, seed=0)
    r = invoke(["make-batches", str(root / "clips"), str(root / "batches"), "--labels", str(root / "labels.csv"),
                "--multi-label", "--features", str(root / "features.yaml"), "--batch-size", "10",
                "--test-fraction", "0.25", "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    # the same clips single-label (the first class of each, 'none' for an empty set)
    with open(root / "single.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for name, present in sets.items():
            w.writerow([name, present[0] if present else "none"])
    r = invoke(["make-batches", str(root / "clips"), str(root / "single"), "--labels", str(root / "single.csv"),
                "--features", str(root / "features.yaml"), "--batch-size", "10", "--test-fraction", "0.25",
                "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    return root


def train_args(ws, save, *extra, data="batches"):
    return ["train", "--data-path", str(ws / data), "--save-path", str(save), "--layer-def",
            str(ws / "layers.yaml"), "--layer-params", str(ws / "params.yaml"), "--mini", "4", *extra]


def only_run(save):
    runs = [d for d in os.listdir(save) if d.startswith("ConvNet__")]
    assert len(runs) == 1, runs
    return os.path.join(save, runs[0])


def log(run):
    return [json.loads(line) for line in open(os.path.join(run, "train_log.jsonl"))]


def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__state__"}


def state(path):
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["__state__"]))


def test_test_lines_show_cost_and_map_and_the_log_holds_per_class_ap(ml, tmp_path):
    r = invoke(train_args(ml, tmp_path, "--epochs", "3"))
    assert r.exit_code == 0, r.output
    lines = [l for l in r.output.splitlines() if "test cost" in l]
    assert len(lines) == 3 and all(" mAP " in l for l in lines)
    run = only_run(tmp_path)
    tests = [rec for rec in log(run) if rec["type"] == "test"]
    assert len(tests) == 3
    for rec in tests:
        assert set(rec["ap"]) == set(CLASSES)
        aps = [a for a in rec["ap"].values() if a is not None]
        assert aps and all(0 <= a <= 1 for a in aps)
        assert rec["map"] == pytest.approx(float(np.mean(aps)))
        assert f"mAP {rec['map']:.4f}" in r.output
    # --best-by map is the default here: best.npz is the test of highest mAP (of equal ones, the lowest cost)
    st = state(os.path.join(run, "best.npz"))
    assert st["options"]["best_by"] == "map" and st["multi_label"] is True
    best = max(tests, key=lambda rec: (rec["map"], -rec["cost"]))
    assert st["best"]["by"] == "map" and st["best"]["metric"] == pytest.approx(best["map"])
    assert (st["best"]["epoch"], st["best"]["batch"]) == (best["epoch"], best["batch"])
    assert "done: best test map" in r.output


def test_single_label_runs_keep_best_by_cost(ml, tmp_path):
    (ml / "single.yaml").write_text((ml / "layers.yaml").read_text().replace("outputs: 3", "outputs: 4"))
    r = invoke(["train", "--data-path", str(ml / "single"), "--save-path", str(tmp_path), "--layer-def",
                str(ml / "single.yaml"), "--mini", "4", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    st = state(os.path.join(only_run(tmp_path), "best.npz"))
    assert st["options"]["best_by"] == "cost" and st["multi_label"] is False
    assert "mAP" not in r.output


@pytest.mark.parametrize("args,data,message", [
    (["--best-by", "map"], "single", "--best-by map: the mean average precision over classes is for multi-label"),
    (["--best-by", "auc"], "batches", "--best-by auc: the batches are multi-label"),
])
def test_best_by_that_does_not_fit_the_batches_exits_2(ml, tmp_path, args, data, message):
    layers = ml / ("single.yaml" if data == "single" else "layers.yaml")
    if data == "single":
        layers.write_text((ml / "layers.yaml").read_text().replace("outputs: 3", "outputs: 4"))
    r = invoke(["train", "--data-path", str(ml / data), "--save-path", str(tmp_path), "--layer-def", str(layers),
                "--mini", "4", "--epochs", "1", *args])
    assert r.exit_code == 2
    err = r.output.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_softmax_net_on_multi_label_batches_exits_2_with_one_line(ml, tmp_path):
    text = (ml / "layers.yaml").read_text().replace(", neuron: logistic}", "}").replace(
        "bce:    {type: cost.bce, inputs: [labels, fc2]}",
        "probs: {type: softmax, inputs: fc2}\nlogprob: {type: cost.logreg, inputs: [labels, probs]}")
    (tmp_path / "softmax.yaml").write_text(text)
    r = invoke(["train", "--data-path", str(ml / "batches"), "--save-path", str(tmp_path / "runs"), "--layer-def",
                str(tmp_path / "softmax.yaml"), "--epochs", "1"])
    assert r.exit_code == 2
    err = r.output.strip().splitlines()
    assert len(err) == 1 and "multi-label" in err[0] and "neuron: logistic" in err[0] and "cost.bce" in err[0]
    assert not os.path.exists(tmp_path / "runs")


def test_resume_is_exact_with_balance_and_mixup(ml, tmp_path):
    extra = ("--seed", "3", "--balance", "--augment", "mixup,timeshift", "--quiet")
    a, b = tmp_path / "a", tmp_path / "b"
    assert invoke(train_args(ml, a, "--epochs", "4", *extra)).exit_code == 0
    assert invoke(train_args(ml, b, "--epochs", "2", *extra)).exit_code == 0
    rb = only_run(b)
    r = invoke(["train", "-f", rb, "--epochs", "4", "--quiet"])
    assert r.exit_code == 0, r.output
    from convnet_cli.train.checkpoint import newest_checkpoint

    wa, wb = arrays(newest_checkpoint(only_run(a))), arrays(newest_checkpoint(rb))
    assert set(wa) == set(wb)
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    ta = [rec["ap"] for rec in log(only_run(a)) if rec["type"] == "test"]
    tb = [rec["ap"] for rec in log(rb) if rec["type"] == "test"]
    assert ta == tb


def test_a_multi_label_run_resumed_on_single_label_batches_is_refused(ml, tmp_path):
    assert invoke(train_args(ml, tmp_path, "--epochs", "1", "--quiet")).exit_code == 0
    r = invoke(["train", "-f", only_run(tmp_path), "--epochs", "2", "--data-path", str(ml / "single")])
    assert r.exit_code == 2
    err = r.output.strip().splitlines()
    assert len(err) == 1 and "the run trained on multi-label batches and these are single-label" in err[0]
    assert "--multi-label" in err[0]


# -- --balance and mixup, in the provider ---------------------------------------------------------------------
def _served(ml, balance, epochs=6):
    from convnet_cli.backend import CPU
    from convnet_cli.data.batch_files import BatchSet
    from convnet_cli.data.provider import DataProvider

    bs = BatchSet(str(ml / "batches"))
    p = DataProvider(bs, bs.train_range, 4, CPU, seed=1, train=True, balance=balance)
    present = []
    for epoch in range(1, epochs + 1):
        for _, mbs in p.iter_epoch(epoch):
            for mb in mbs:
                present.append(np.asarray(mb.labels) > 0.5)
                assert mb.targets.multi_label
                np.testing.assert_array_equal(np.asarray(mb.labels), mb.targets.array())
    return np.concatenate(present)


def test_balance_serves_every_class_about_equally_often(ml):
    plain, balanced = _served(ml, False), _served(ml, True)
    assert plain.shape == balanced.shape  # the same number of cases an epoch
    counts = {"plain": plain.sum(axis=0), "balanced": balanced.sum(axis=0)}
    # the rarest class (in about 1 clip in 7) is served several times as often with --balance
    rare = int(np.argmin(counts["plain"]))
    assert counts["balanced"][rare] >= 2 * max(counts["plain"][rare], 1)
    spread = {k: v.max() / max(v.min(), 1) for k, v in counts.items()}
    assert spread["balanced"] < spread["plain"]


def test_mixup_mixes_multi_label_targets_and_keeps_unknown_unknown():
    from convnet_cli.data.augment import AugmentContext, mixup

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 3, 1)).astype(np.float32)
    y = np.array([[1, 0, -1], [0, 1, 0], [1, 1, 0], [0, 0, 0], [-1, 0, 1], [1, 0, 0]], np.float32)
    x2, y2 = mixup(x.copy(), y.copy(), np.random.default_rng(5), np, AugmentContext(6, 3, "test"))
    r = np.random.default_rng(5)
    pair = r.permutation(6)
    lam = r.beta(0.2, 0.2, size=6).astype(np.float32)
    lam = np.maximum(lam, 1 - lam)
    want = lam[:, None] * y + (1 - lam[:, None]) * y[pair]
    want[(y < 0) | (y[pair] < 0)] = -1
    np.testing.assert_allclose(y2, want, rtol=1e-6)
    np.testing.assert_allclose(x2, lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[pair], rtol=1e-5)
    assert ((y2 >= 0) & (y2 <= 1) | (y2 == -1)).all()
