"""train --best-by, --balance and --init-from end to end on tiny generated audio (the workspace of
test_cli_train.py: two classes, 3 training batch files of 8 clips, one test batch)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.helpers import invoke
from tests.test_cli_train import arrays, only_run, train_args, workspace  # noqa: F401 (fixture)


def _records(run):
    return [json.loads(line) for line in open(os.path.join(run, "train_log.jsonl"))]


def _state(path):
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["__state__"]))


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("by", ["cost", "error", "auc"])
def test_best_by_picks_the_best_test_and_records_it(workspace, tmp_path, by):
    args = ["--epochs", "4"] + (["--best-by", by] if by != "cost" else [])
    r = invoke(train_args(workspace, tmp_path, *args))
    assert r.exit_code == 0, r.output
    run = only_run(tmp_path)
    tests = [t for t in _records(run) if t["type"] == "test"]
    assert len(tests) == 4 and all(t.get("auc") is not None for t in tests)  # two classes: AUC logged
    values = [t[by] for t in tests]
    # the first test reaching the best value (later ties do not replace it)
    want = values.index(max(values) if by == "auc" else min(values))
    state = _state(os.path.join(run, "best.npz"))
    assert state["options"]["best_by"] == by
    assert state["best"]["by"] == by and state["best"]["metric"] == pytest.approx(values[want])
    assert (state["best"]["epoch"], state["best"]["batch"]) == (tests[want]["epoch"], tests[want]["batch"])
    # best.npz holds the weights of that test's checkpoint
    ckpt = os.path.join(run, f"{tests[want]['epoch']}.{tests[want]['batch']}.npz")
    assert _same(arrays(ckpt), arrays(os.path.join(run, "best.npz")))
    # predict -f RUN uses best.npz, info names the choice
    out = tmp_path / "p.csv"
    r = invoke(["predict", "-f", run, "--data-path", str(workspace / "batches"), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    r = invoke(["info", run, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["best"]["by"] == by


def test_improvement_rules_and_cost_is_the_default(workspace, tmp_path):
    """Lower is better for cost and error, higher for AUC; a tie keeps the earlier model; a best kept by
    another criterion is replaced; a run without --best-by records cost."""
    from convnet_cli.train.best import improves

    assert improves(0.5, {"metric": 0.6, "by": "cost"}, "cost")
    assert not improves(0.6, {"metric": 0.6, "by": "cost"}, "cost")   # a tie keeps the earlier model
    assert improves(0.9, {"metric": 0.8, "by": "auc"}, "auc")
    assert not improves(0.7, {"metric": 0.8, "by": "auc"}, "auc")
    assert improves(0.9, {"metric": 0.1, "by": "error"}, "cost")      # another criterion: restart
    r = invoke(train_args(workspace, tmp_path, "--epochs", "1"))
    assert r.exit_code == 0, r.output
    assert _state(os.path.join(only_run(tmp_path), "best.npz"))["best"]["by"] == "cost"


def test_early_stop_counts_tests_without_improvement_of_the_chosen_metric(workspace, tmp_path):
    r = invoke(train_args(workspace, tmp_path, "--epochs", "30", "--early-stop", "1", "--best-by", "error"))
    assert r.exit_code == 0, r.output
    run = only_run(tmp_path)
    tests = [t for t in _records(run) if t["type"] == "test"]
    errors = [t["error"] for t in tests]
    # stopped at the first test that did not lower the error
    assert len(tests) < 30
    assert errors[-1] >= min(errors[:-1])
    assert all(errors[i] < min(errors[:i]) for i in range(1, len(errors) - 1))


def test_best_by_auc_needs_two_classes_and_bad_values_exit_2(workspace, tmp_path):
    r = invoke(train_args(workspace, tmp_path, "--best-by", "f1"))
    assert r.exit_code == 2 and "--best-by" in r.output
    sum2 = workspace / "sum2.yaml"
    sum2.write_text("data: {type: data, dataIdx: 0}\nfc: {type: fc, inputs: data, outputs: 3}\n"
                    "sq: {type: cost.sum2, inputs: fc}\n")
    args = train_args(workspace, tmp_path, "--best-by", "auc")
    args[args.index("--layer-def") + 1] = str(sum2)
    (workspace / "sum2-params.yaml").write_text("DEFAULT: {epsW: 0.01}\n")
    args[args.index("--layer-params") + 1] = str(workspace / "sum2-params.yaml")
    r = invoke(args)
    assert r.exit_code == 2 and "--best-by auc" in r.output and "cost.logreg" in r.output
    assert not os.path.exists(tmp_path) or not any(d.startswith("ConvNet__") for d in os.listdir(tmp_path))


def test_check_best_by_auc_refuses_more_than_two_classes():
    from convnet_cli.errors import ConfigError
    from convnet_cli.train.best import check_best_by

    class L:
        is_cost, is_classifier, reports_error = True, True, True  # a cost.logreg's role

    with pytest.raises(ConfigError, match="two classes, the data has 3"):
        check_best_by("auc", ["a", "b", "c"], [L()])
    check_best_by("auc", ["a", "b"], [L()])


@pytest.mark.parametrize("by, x, text", [("cost", 2.0, "test cost 0.3000"), ("error", 3.0, "test error 0.1000"),
                                         ("auc", 1.0, "test AUC 0.9500")])
def test_show_marks_the_test_that_made_best_npz(by, x, text):
    pytest.importorskip("matplotlib")
    from convnet_cli.show import plots

    records = [{"type": "test", "progress": 1.0, "cost": 0.5, "error": 0.3, "auc": 0.95},
               {"type": "test", "progress": 2.0, "cost": 0.3, "error": 0.2, "auc": 0.90},
               {"type": "test", "progress": 3.0, "cost": 0.4, "error": 0.1, "auc": 0.80}]
    fig = plots._figure(*plots.COST_SIZE)
    ax_cost, ax_err = fig.subplots(2, 1)
    plots._mark_best(records, by, ax_cost, ax_err)
    assert [ln.get_xdata()[0] for ln in ax_cost.lines] == [x]
    texts = [t.get_text() for ax in (ax_cost, ax_err) for t in ax.texts]
    assert texts == [f"best.npz: {text}"]


def test_balance_is_recorded_and_resumes_exactly(workspace, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = invoke(train_args(workspace, one, "--epochs", "2", "--balance", "--seed", "4"))
    assert r.exit_code == 0, r.output
    r = invoke(train_args(workspace, two, "--epochs", "1", "--balance", "--seed", "4"))
    assert r.exit_code == 0, r.output
    r = invoke(["train", "-f", only_run(two), "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    a, b = only_run(one), only_run(two)
    last = sorted(f for f in os.listdir(a) if f[0].isdigit())[-1]
    assert _same(arrays(os.path.join(a, last)), arrays(os.path.join(b, last)))
    assert _state(os.path.join(b, last))["options"]["balance"] is True
    # and it changes what is trained on
    plain = tmp_path / "plain"
    assert invoke(train_args(workspace, plain, "--epochs", "1", "--seed", "4")).exit_code == 0
    first = sorted(f for f in os.listdir(only_run(plain)) if f[0].isdigit())[0]
    assert not _same(arrays(os.path.join(only_run(plain), first)), arrays(os.path.join(b, first)))


def test_init_from_copies_matching_layers_and_freezes_with_eps_zero(workspace, tmp_path):
    src = tmp_path / "src"
    r = invoke(train_args(workspace, src, "--epochs", "2"))
    assert r.exit_code == 0, r.output
    source = arrays(os.path.join(only_run(src), "best.npz"))
    # the new net: fc2 renamed 'head' (new), conv1 frozen by epsW/epsB 0
    layers = (workspace / "layers.yaml").read_text().replace("fc2", "head")
    (tmp_path / "ft.yaml").write_text(layers)
    (tmp_path / "ft-params.yaml").write_text((workspace / "params.yaml").read_text()
                                             + "conv1: {epsW: 0, epsB: 0}\n")
    ft = tmp_path / "ft"
    args = train_args(workspace, ft, "--epochs", "1", "--init-from", only_run(src))
    args[args.index("--layer-def") + 1] = str(tmp_path / "ft.yaml")
    args[args.index("--layer-params") + 1] = str(tmp_path / "ft-params.yaml")
    args.remove("--quiet")
    r = invoke(args)
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("init-from"))
    assert "best.npz: copied 2 layers (conv1, bn1;" in line and "initialised head (not in the checkpoint)" in line
    run = only_run(ft)
    after = arrays(sorted(os.path.join(run, f) for f in os.listdir(run) if f[0].isdigit())[-1])
    # frozen: conv1 exactly as in the source run; bn1 copied then trained on
    assert np.array_equal(after["conv1/weights"], source["conv1/weights"])
    assert np.array_equal(after["conv1/biases"], source["conv1/biases"])
    assert not np.array_equal(after["bn1/scale" if "bn1/scale" in after else "bn1/gamma"],
                              source["bn1/scale" if "bn1/scale" in source else "bn1/gamma"])
    assert _state(os.path.join(run, "best.npz"))["options"]["init_from"] == only_run(src)


def test_init_from_reports_shape_mismatch_and_refuses_no_match(workspace, tmp_path):
    from convnet_cli.backend import get_backend
    from convnet_cli.net import Net
    from convnet_cli.train.init_from import init_from

    src = tmp_path / "src"
    assert invoke(train_args(workspace, src, "--epochs", "1")).exit_code == 0
    from convnet_cli.data.batch_files import BatchSet

    text = (workspace / "layers.yaml").read_text().replace("outputs: 2", "outputs: 3")
    net = Net.from_text(text, "", BatchSet(str(workspace / "batches")).data_shape, get_backend("cpu"), 0)
    before = net.get_arrays()
    s = init_from(net, only_run(src))
    saved = arrays(os.path.join(only_run(src), "best.npz"))
    assert s.copied == ["conv1", "bn1"]
    assert len(s.fresh) == 1 and s.fresh[0][0] == "fc2" and s.fresh[0][1].startswith("weights (3, ")
    assert "initialised fc2 (weights (3, " in s.line()
    now = net.get_arrays()
    assert np.array_equal(now["fc2/weights"], before["fc2/weights"])
    assert np.array_equal(now["conv1/weights"], saved["conv1/weights"])
    assert np.array_equal(now["bn1/running_mean"], saved["bn1/running_mean"])
    assert not any(k.count("/") == 2 for k in now if k.startswith("conv1/")) or \
        not np.array_equal(now.get("conv1/weights/m"), saved.get("conv1/weights/m"))  # updater state not copied
    other = ("data: {type: data, dataIdx: 0}\nlabels: {type: data, dataIdx: 1}\n"
             "zz: {type: fc, inputs: data, outputs: 2}\np: {type: softmax, inputs: zz}\n"
             "c: {type: cost.logreg, inputs: [labels, p]}\n")
    (tmp_path / "other.yaml").write_text(other)
    (tmp_path / "p.yaml").write_text("DEFAULT: {epsW: 0.01}\n")
    args = train_args(workspace, tmp_path / "o", "--init-from", only_run(src))
    args[args.index("--layer-def") + 1] = str(tmp_path / "other.yaml")
    args[args.index("--layer-params") + 1] = str(tmp_path / "p.yaml")
    r = invoke(args)
    assert r.exit_code == 2 and "--init-from" in r.output and "no layer of this net matches" in r.output
    r = invoke(train_args(workspace, tmp_path / "o", "--init-from", str(tmp_path / "nowhere")))
    assert r.exit_code == 2 and "--init-from" in r.output


def test_init_from_on_a_resume_is_refused(workspace, tmp_path):
    assert invoke(train_args(workspace, tmp_path, "--epochs", "1")).exit_code == 0
    r = invoke(["train", "-f", only_run(tmp_path), "--epochs", "2", "--init-from", only_run(tmp_path)])
    assert r.exit_code == 2 and "--init-from starts a new run" in r.output
