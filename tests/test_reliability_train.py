"""Regression tests for issue 13 (the hostile-user report), training side: each bad input is a one-line user
error naming the file, layer or key (exit 2), and nothing a run wrote before is lost or left half-written."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from convnet_cli.errors import ConfigError
from tests.helpers import invoke
from tests.test_cli_train import LAYERS, PARAMS, train_args, workspace  # noqa: F401  (the fixture)
from tests.test_config_errors import BASE, error


def one_line_error(r, code=2):
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    lines = [l for l in r.output.splitlines() if l.startswith("convnet") or "error" in l]
    assert len(lines) == 1, r.output
    return lines[0]


def only_run(save):
    runs = [os.path.join(save, d) for d in os.listdir(save)]
    assert len(runs) == 1, runs
    return runs[0]


# -- 7, 8: layer names (docs/CONFIG.md) -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["conv/1", "__state__", "conv 1"])
def test_layer_names_are_validated(bad):
    msg = error(BASE.replace("conv2:", f"'{bad}':").replace("inputs: conv2", f"inputs: '{bad}'"))
    assert f"layer '{bad}': not a valid layer name" in msg and "rename it" in msg and "(line 3)" in msg


def test_dotted_and_dashed_layer_names_are_fine():
    from tests.test_config_errors import build

    net = build(BASE.replace("conv2", "conv-2.a"))
    assert "conv-2.a" in net.by_name


# -- 13: infinite sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [".inf", "1e400", ".nan"])
def test_infinite_filters_is_a_config_error(value):
    msg = error(BASE.replace("filters: 4,", f"filters: {value},"))
    assert msg.startswith("layers.yaml: layer 'conv2': filters") and "(line 3)" in msg


def test_infinite_initw_is_refused():
    msg = error(BASE.replace("outputs: 3", "outputs: 3, initW: 1e400"))
    assert "layer 'fc1': initW '1e400' must be a finite number" in msg


def test_batchnorm_epsilon_zero_is_refused():
    layers = BASE.replace("probs: {type: softmax, inputs: fc1}",
                          "bn: {type: batchnorm, inputs: fc1, epsilon: 0}\nprobs: {type: softmax, inputs: bn}")
    assert "layer 'bn': epsilon 0 must be above 0" in error(layers)


# -- weak answer: sizes far too large name the layer and key ---------------------------------------------------
@pytest.mark.parametrize("old,new,key", [("filters: 4,", "filters: 1000000000,", "filters 1000000000"),
                                         ("padding: 1}", "padding: 100000}", "padding 100000"),
                                         ("outputs: 3", "outputs: 100000000", "outputs 100000000")])
def test_absurd_sizes_name_the_layer_and_key(old, new, key):
    msg = error(BASE.replace(old, new))
    assert "layer '" in msg and key in msg and "GiB" in msg


# -- 14 + weak answer: every learning setting validated up front -----------------------------------------------
@pytest.mark.parametrize("params,key", [
    ("fc1: {updater: adam, momW: 5}", "momW"),
    ("fc1: {updater: adam, beta2: 2}", "beta2"),
    ("fc1: {updater: adam, epsilon: 0}", "epsilon"),
    ("logprob: {coeff: .nan}", "coeff"),
    ("fc1: {updater: rmsprop, rho: 1e400}", "rho"),
    ("fc1: {epsW: .nan}", "epsW"),
    ("fc1: {epsW: -0.1}", "epsW"),
    ("fc1: {epsB: 'exp[base=-1;tgtFactor=10]'}", "epsB"),
    ("fc1: {clipNorm: -1}", "clipNorm"),
    ("fc1: {epsW: 'linear[base=0.1;tgtFactor=inf]'}", "epsW"),
    ("fc1: {wc: -1}", "wc"),
    ("fc1: {momB: 1}", "momB"),
])
def test_learning_settings_are_validated(params, key):
    layer = params.split(":")[0]
    msg = error(params=params)
    assert msg.startswith(f"params.yaml: layer '{layer}': {key} ") and "(line 1)" in msg


def test_valid_learning_settings_still_load():
    from tests.test_config_errors import build

    build(params="DEFAULT: {updater: adam, momW: 0.9, beta2: 0.999, epsilon: 1e-8, wc: 0, clipNorm: 5}\n"
                 "fc1: {epsW: 'exp[base=0.01;tgtFactor=10]', epsB: 0}")


def test_sgd_momentum_five_would_have_diverged_adam_math_domain():
    # the old traceback: adam's sqrt(1 - beta2**t) of a negative number
    with pytest.raises(ConfigError):
        from tests.test_config_errors import build

        build(params="DEFAULT: {updater: adam, beta2: 2}")


# -- 15, --epochs, --max-checkpoints flags ---------------------------------------------------------------------
def test_negative_seed_is_a_usage_error(workspace, tmp_path):
    r = invoke(train_args(workspace, tmp_path / "runs", "--seed", "-5"))
    assert r.exit_code == 2 and "--seed" in r.output and "Traceback" not in r.output


def test_huge_epochs_is_bounded(workspace, tmp_path):
    r = invoke(train_args(workspace, tmp_path / "runs", "--epochs", "99999999999999999999"))
    assert r.exit_code == 2 and "--epochs" in r.output and "1000000" in r.output and "Traceback" not in r.output


def test_api_options_are_checked_too():
    from convnet_cli.train.run_checks import check_options
    from convnet_cli.train.trainer import TrainOptions

    with pytest.raises(ConfigError, match="--seed -5"):
        check_options(TrainOptions(seed=-5))
    with pytest.raises(ConfigError, match="--epochs"):
        check_options(TrainOptions(epochs=10 ** 20))


def test_huge_test_range_names_the_flag(workspace, tmp_path):
    r = invoke(train_args(workspace, tmp_path / "runs", "--test-range", "1-100000000000"))
    line = one_line_error(r)
    assert "--test-range" in line and "at most" in line


def test_max_checkpoints_defaults_to_five(workspace, tmp_path):
    from convnet_cli.commands.train import command

    assert "0 keeps all" in command.get_help(__import__("click").Context(command))
    save = tmp_path / "runs"
    r = invoke(train_args(workspace, save, "--epochs", "7", "--test-freq", "1"))
    assert r.exit_code == 0, r.output
    run = only_run(save)
    numbered = [f for f in os.listdir(run) if f[0].isdigit() and f.endswith(".npz")]
    assert len(numbered) == 5 and os.path.exists(os.path.join(run, "best.npz"))


# -- weak answers: classes, overlapping ranges, no labels --------------------------------------------------------
def _batches_like(ws, tmp_path, **meta_changes):
    """A copy of the workspace batches with batches.meta changed."""
    from convnet_cli.data.batch_files import restricted_load
    from convnet_cli.fileio import write_pickle_atomic

    dst = tmp_path / "batches"
    shutil.copytree(ws / "batches", dst)
    meta = restricted_load(str(dst / "batches.meta"))
    meta.update(meta_changes)
    write_pickle_atomic(str(dst / "batches.meta"), meta)
    return dst


def _with_data(args, path):
    args = list(args)
    args[args.index("--data-path") + 1] = str(path)
    return args


def test_no_labels_batches_are_refused(workspace, tmp_path):
    data = _batches_like(workspace, tmp_path, label_names=[])
    line = one_line_error(invoke(_with_data(train_args(workspace, tmp_path / "runs"), data)))
    assert "no labels" in line and "--no-labels" in line and str(data) in line


def test_one_class_is_refused(workspace, tmp_path):
    data = _batches_like(workspace, tmp_path, label_names=["upcall"])
    line = one_line_error(invoke(_with_data(train_args(workspace, tmp_path / "runs"), data)))
    assert "one class only" in line


def test_overlapping_ranges_warn(workspace, tmp_path):
    r = invoke([a for a in train_args(workspace, tmp_path / "runs", "--epochs", "1", "--train-range", "1-3",
                                      "--test-range", "3-4") if a != "--quiet"])
    assert r.exit_code == 0, r.output
    assert "warning: --train-range and --test-range share batch(es) 3" in r.output


# -- 2: train -f with other data ---------------------------------------------------------------------------------
def test_resume_refuses_batches_of_other_labels(workspace, tmp_path):
    save = tmp_path / "runs"
    assert invoke(train_args(workspace, save, "--epochs", "1")).exit_code == 0
    other = _batches_like(workspace, tmp_path, label_names=["upcall", "noise"])  # the order swapped
    line = one_line_error(invoke(["train", "-f", only_run(save), "--data-path", str(other), "--epochs", "2"]))
    assert "does not fit the run" in line and "label names" in line


def test_resume_refuses_other_normalisation(workspace, tmp_path):
    from convnet_cli.data.batch_files import restricted_load

    save = tmp_path / "runs"
    assert invoke(train_args(workspace, save, "--epochs", "1")).exit_code == 0
    meta = restricted_load(str(workspace / "batches" / "batches.meta"))
    other = _batches_like(workspace, tmp_path, data_mean=meta["data_mean"] + 1)
    line = one_line_error(invoke(["train", "-f", only_run(save), "--data-path", str(other), "--epochs", "2"]))
    assert "normalisation" in line


# -- 3: resuming from another folder; every params version kept ------------------------------------------------
def test_resume_elsewhere_never_reads_the_current_folder(workspace, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(workspace / "layers.yaml", ws / "layers.yaml")
    shutil.copy(workspace / "params.yaml", ws / "params.yaml")
    monkeypatch.chdir(ws)
    args = train_args(workspace, "runs", "--epochs", "1")
    args[args.index("--layer-def") + 1] = "layers.yaml"
    args[args.index("--layer-params") + 1] = "params.yaml"
    assert invoke(args).exit_code == 0
    run = os.path.abspath(only_run("runs"))
    stray = tmp_path / "elsewhere"
    stray.mkdir()
    (stray / "params.yaml").write_text("DEFAULT: {epsW: 0.5}\n")   # a stray file of the same name
    monkeypatch.chdir(stray)
    r = invoke(["train", "-f", run, "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert open(os.path.join(run, "params.yaml")).read() == PARAMS   # the run's copy is untouched
    assert not os.path.exists(os.path.join(run, "params.2.yaml"))
    # an edited params file (the one the run was given) becomes version 2, logged when it took effect
    (ws / "params.yaml").write_text(PARAMS.replace("0.003", "0.001"))
    r = invoke(["train", "-f", run, "--epochs", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    assert open(os.path.join(run, "params.yaml")).read() == PARAMS
    assert "0.001" in open(os.path.join(run, "params.2.yaml")).read()
    recs = [json.loads(l) for l in open(os.path.join(run, "train_log.jsonl"))]
    versions = [(r["file"], r["epoch"]) for r in recs if r["type"] == "params"]
    assert versions == [("params.yaml", 1), ("params.2.yaml", 3)]
    assert recs[-1]["type"] == "test"


# -- 12: stale temp files and the log after kills --------------------------------------------------------------
def test_resume_cleans_temps_and_cuts_the_log(workspace, tmp_path):
    save = tmp_path / "runs"
    assert invoke(train_args(workspace, save, "--epochs", "1")).exit_code == 0
    run = only_run(save)
    log = os.path.join(run, "train_log.jsonl")
    good = open(log).read()
    # what kill -9 loops leave: temp files of checkpoints, and records logged after the last checkpoint
    for name in (".2.3.npz.123.abcd1234.tmp", ".tmp-2.3.npz", ".best.tmp"):
        open(os.path.join(run, name), "wb").write(b"x" * 100)
    extra = [json.loads(l) for l in good.splitlines() if '"train"' in l][:2]
    with open(log, "a") as f:
        for rec in extra:
            f.write(json.dumps(dict(rec, epoch=2)) + "\n")
        f.write('{"type": "tra')  # torn
    r = invoke(["train", "-f", run, "--epochs", "1", "--quiet"])  # already done: still cleans up
    assert r.exit_code == 0, r.output
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n.startswith(".tmp-")]
    assert open(log).read() == good


# -- 11: __state__ of the wrong shape --------------------------------------------------------------------------
def _rewrite_state(src, dst, state_text):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["__state__"] = np.array(state_text)
    np.savez(dst, **arrays)


@pytest.mark.parametrize("mutate", [
    lambda s: [1, 2, 3],
    lambda s: {k: v for k, v in s.items() if k != "data_shape"},
    lambda s: dict(s, data_shape="big"),
    lambda s: dict(s, label_names=[1, 2]),
    lambda s: dict(s, epoch="one"),
    lambda s: dict(s, history={"a": 1}),
])
def test_wrong_state_is_one_line_in_predict_train_show(workspace, tmp_path, mutate):
    save = tmp_path / "runs"
    assert invoke(train_args(workspace, save, "--epochs", "1")).exit_code == 0
    run = only_run(save)
    src = os.path.join(run, "best.npz")
    with np.load(src, allow_pickle=False) as z:
        state = json.loads(str(z["__state__"]))
    bad = str(tmp_path / "bad.npz")
    _rewrite_state(src, bad, json.dumps(mutate(state)))
    for args in (["predict", "-f", bad, "--data-path", str(workspace / "batches"), "--out", str(tmp_path / "p.csv")],
                 ["train", "-f", bad, "--epochs", "2"],
                 ["show", "-f", bad, "--filters", "conv1", "--out-dir", str(tmp_path)]):
        line = one_line_error(invoke(args))
        assert bad in line and "__state__" in line


# -- weak answer: NaN weights ----------------------------------------------------------------------------------
def test_nan_weights_are_refused_naming_the_arrays(workspace, tmp_path):
    save = tmp_path / "runs"
    assert invoke(train_args(workspace, save, "--epochs", "1")).exit_code == 0
    src = os.path.join(only_run(save), "best.npz")
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["fc2/weights"] = arrays["fc2/weights"] * np.nan
    bad = str(tmp_path / "nan.npz")
    np.savez(bad, **arrays)
    line = one_line_error(invoke(["predict", "-f", bad, "--data-path", str(workspace / "batches"),
                                  "--out", str(tmp_path / "p.csv")]))
    assert "fc2/weights" in line and "NaN" in line
    assert not os.path.exists(tmp_path / "p.csv")


# -- 10 + weak answers: writers name their file, leave no temp, exit 2 -----------------------------------------
def test_best_copy_disk_full_names_best_and_leaves_no_temp(workspace, tmp_path, monkeypatch):
    import errno

    def full(src, dst, length=0):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full)
    save = tmp_path / "runs"
    line = one_line_error(invoke(train_args(workspace, save, "--epochs", "1")))
    assert "best.npz: disk full" in line
    run = only_run(save)
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]


def test_nonfinite_stop_without_checkpoint_suggests_no_resume(workspace, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("DEFAULT: {updater: sgd, epsW: 1e30, epsB: 1e30, momW: 0.9}\n")
    layers = tmp_path / "l.yaml"
    layers.write_text(LAYERS.replace("bn1:    {type: batchnorm, inputs: conv1, neuron: relu}\n", "")
                      .replace("inputs: bn1", "inputs: conv1"))
    args = train_args(workspace, tmp_path / "runs", "--epochs", "3")
    args[args.index("--layer-params") + 1] = str(params)
    args[args.index("--layer-def") + 1] = str(layers)
    r = invoke(args)
    assert r.exit_code == 1
    assert "no checkpoint was written yet" in r.output and "train -f" not in r.output


def test_save_path_that_is_a_file(workspace, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    line = one_line_error(invoke(train_args(workspace, f)))
    assert str(f) in line and "is a file" in line


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root ignores permissions")
def test_read_only_save_path(workspace, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        line = one_line_error(invoke(train_args(workspace, ro / "runs")))
        assert str(ro) in line and "cannot create" in line
    finally:
        os.chmod(ro, 0o700)


def test_save_path_under_a_file(workspace, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    line = one_line_error(invoke(train_args(workspace, f / "runs")))
    assert "--save-path" in line and "cannot create" in line


def test_predict_out_folder_and_nan(workspace, tmp_path):
    save = tmp_path / "runs"
    assert invoke(train_args(workspace, save, "--epochs", "1")).exit_code == 0
    run = only_run(save)
    line = one_line_error(invoke(["predict", "-f", run, "--data-path", str(workspace / "batches"),
                                  "--out", str(tmp_path)]))
    assert "--out" in line and "is a folder" in line


def test_predict_never_writes_nan(tmp_path):
    from convnet_cli.errors import DataError
    from convnet_cli.predict.predict import Predictions, write_csv

    p = Predictions(np.array([[0.5, 0.5], [np.nan, 0.1]], np.float32), np.array([0, 1]), ["a.wav", "b.wav"],
                    ["x", "y"])
    with pytest.raises(DataError, match="'b.wav'"):
        write_csv(p, str(tmp_path / "p.csv"))
    assert os.listdir(tmp_path) == []


def test_predict_csv_disk_full_names_the_file(tmp_path, monkeypatch):
    import errno

    from convnet_cli.errors import DataError
    from convnet_cli.predict.predict import Predictions, write_csv

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    p = Predictions(np.array([[0.5, 0.5]], np.float32), np.array([0]), ["a.wav"], ["x", "y"])
    out = str(tmp_path / "p.csv")
    with pytest.raises(DataError, match="p.csv: disk full"):
        write_csv(p, out)
    assert os.listdir(tmp_path) == []


# == issue 23 ================================================================================================
def _numbered(run):
    return sorted(n for n in os.listdir(run) if n[0].isdigit() and n.endswith(".npz"))


def _batches_done(path):
    from convnet_cli.train.checkpoint import read_state

    return read_state(path)["batches_done"]


def _age(path, seconds):
    st = os.stat(path)
    os.utime(path, (st.st_atime + seconds, st.st_mtime + seconds))


# -- 10: checkpoints are ordered by their own state, never by file time ----------------------------------------
def test_future_mtimes_do_not_make_pruning_delete_new_checkpoints(workspace, tmp_path):
    save = tmp_path / "runs"
    assert invoke(train_args(workspace, save, "--epochs", "2", "--max-checkpoints", "2")).exit_code == 0
    run = only_run(save)
    for n in _numbered(run):            # a clock set a year ahead, then set right
        _age(os.path.join(run, n), 365 * 86400)
    r = invoke(["train", "-f", run, "--epochs", "4", "--quiet"])
    assert r.exit_code == 0, r.output
    kept = _numbered(run)
    assert [n.split(".")[0] for n in kept] == ["3", "4"], kept


def test_newest_checkpoint_is_the_furthest_state_whatever_the_mtimes(workspace, tmp_path):
    from convnet_cli.train.checkpoint import list_checkpoints, newest_checkpoint

    save = tmp_path / "runs"
    r = invoke(train_args(workspace, save, "--epochs", "2", "--test-freq", "1", "--max-checkpoints", "0"))
    assert r.exit_code == 0, r.output
    run = only_run(save)
    paths = [p for _, _, p in list_checkpoints(run)]
    progress = [_batches_done(p) for p in paths]
    assert progress == sorted(progress) and len(set(progress)) == len(progress) >= 4
    for i, p in enumerate(paths):       # a copy that gave the files mtimes in the reverse order
        _age(p, 1000 * (len(paths) - i))
    assert [p for _, _, p in list_checkpoints(run)] == paths
    assert newest_checkpoint(run) == paths[-1]
    # continue takes the newest state (not the newest file time) and keeps the whole log
    log = open(os.path.join(run, "train_log.jsonl")).read()
    r = invoke(["continue", run, "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert open(os.path.join(run, "train_log.jsonl")).read() == log   # nothing cut, nothing trained again
    assert [p for _, _, p in list_checkpoints(run)] == paths


# -- 16: a batch folder without a test range (make-batches --test-fraction 0, or `test none`) ------------------
@pytest.fixture(scope="module")
def no_test_batches(workspace):
    out = workspace / "batches-no-test"
    if not out.exists():
        r = invoke(["make-batches", str(workspace / "audio"), str(out), "--features", str(workspace / "features.yaml"),
                    "--batch-size", "8", "--test-fraction", "0", "--jobs", "1", "--quiet"])
        assert r.exit_code == 0, r.output
    return out


def _no_test_args(workspace, batches, save, *extra):
    args = train_args(workspace, save, *extra)
    args[args.index("--data-path") + 1] = str(batches)
    return args


def test_train_runs_without_a_test_range(workspace, no_test_batches, tmp_path):
    from convnet_cli.train.checkpoint import newest_checkpoint

    save = tmp_path / "runs"
    r = invoke(_no_test_args(workspace, no_test_batches, save, "--epochs", "2"))
    assert r.exit_code == 0, r.output
    assert r.output.count("no test range") == 1 and "best.npz" in r.output, r.output   # said once, even --quiet
    run = only_run(save)
    assert "best.npz" not in os.listdir(run)
    assert [n.split(".")[0] for n in _numbered(run)] == ["1", "2"]
    records = [json.loads(line) for line in open(os.path.join(run, "train_log.jsonl"))]
    assert records and not [x for x in records if x["type"] == "test"]
    # predict (and detect, by the same choice) of such a run take its newest checkpoint
    p = invoke(["predict", "-f", run, "--data-path", str(no_test_batches), "--out", str(tmp_path / "p.csv")])
    assert p.exit_code == 0, p.output
    from convnet_cli.train.checkpoint import resolve_checkpoint

    assert resolve_checkpoint(run) == newest_checkpoint(run)
    # and it resumes
    r = invoke(["train", "-f", run, "--epochs", "3"])
    assert r.exit_code == 0, r.output
    assert [n.split(".")[0] for n in _numbered(run)] == ["1", "2", "3"]


def test_an_explicit_empty_test_range_is_still_an_error(workspace, no_test_batches, tmp_path):
    line = one_line_error(invoke(_no_test_args(workspace, no_test_batches, tmp_path / "runs", "--test-range", "")))
    assert "--test-range" in line
    assert not (tmp_path / "runs").exists()


def test_early_stop_without_a_test_range_names_both(workspace, no_test_batches, tmp_path):
    line = one_line_error(invoke(_no_test_args(workspace, no_test_batches, tmp_path / "runs", "--early-stop", "2")))
    assert "--early-stop" in line and "test range" in line


# -- conv_algos.json, the per-machine convolution algorithm cache: never worth a failure ------------------------
@pytest.fixture
def algo_cache(tmp_path, monkeypatch):
    """winograd's cache in a fresh folder, with nothing loaded yet in this process."""
    from convnet_cli.layers import winograd

    monkeypatch.setenv("CONVNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVNET_CONV_ALGO", raising=False)
    monkeypatch.setattr(winograd, "_CHOICES", {})
    monkeypatch.setattr(winograd, "_LOADED", [False])
    monkeypatch.setattr(winograd, "_WARNED", [False], raising=False)
    (tmp_path / "cache").mkdir()
    return winograd


def _one_warning(err, path):
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "rm " in lines[0] and "Traceback" not in err
    return lines[0]


def test_a_deeply_nested_algo_cache_is_ignored_with_one_warning(algo_cache, capsys):
    path = algo_cache.cache_path()
    with open(path, "w") as f:
        f.write("[" * 200_000 + "]" * 200_000)
    algo_cache._load()
    assert algo_cache.choices() == {}
    _one_warning(capsys.readouterr().err, path)


def test_a_huge_algo_cache_is_not_read_and_the_next_save_is_bounded(algo_cache, capsys):
    import json as _json

    path = algo_cache.cache_path()
    big = {f"machine{i}": {f"forward conv3x3 {i}x{j} float32": "direct" for j in range(300)} for i in range(120)}
    with open(path, "w") as f:
        _json.dump(big, f)
    assert os.path.getsize(path) > 1 << 20
    algo_cache._load()
    assert "larger than" in _one_warning(capsys.readouterr().err, path)
    for i in range(5000):                      # far more shapes than a net has
        algo_cache._CHOICES[f"forward conv3x3 {i}x{i}x8->8 pad1,1 float32"] = "winograd"
    algo_cache._save()
    assert os.path.getsize(path) <= 1 << 20
    data = _json.loads(open(path).read())
    assert list(data) == [algo_cache._machine()] and len(data[algo_cache._machine()]) <= 1000


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_algo_cache_neither_hangs_nor_is_replaced(tmp_path):
    import subprocess
    import sys

    (tmp_path / "cache").mkdir()
    fifo = tmp_path / "cache" / "conv_algos.json"
    os.mkfifo(fifo)
    code = ("from convnet_cli.layers import winograd as w\nw._load()\nw._CHOICES['k'] = 'direct'\nw._save()\n"
            "print(len(w.choices()))\n")
    env = dict(os.environ, CONVNET_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("CONVNET_CONV_ALGO", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    assert "not a regular file" in _one_warning(r.stderr, fifo)
    import stat

    assert stat.S_ISFIFO(os.stat(fifo).st_mode)   # the user's FIFO is left as it was


def test_a_save_path_given_for_a_run_names_its_runs(tmp_path):
    """`-f RUNS` (the --save-path) instead of `-f RUNS/ConvNet__...`: one line naming the newest run to give."""
    import numpy as np

    from convnet_cli.errors import DataError
    from convnet_cli.train.checkpoint import resolve_checkpoint, save_checkpoint

    runs = tmp_path / "runs"
    for name in ("ConvNet__2026-01-01_10.00.00", "ConvNet__2026-01-02_10.00.00"):
        (runs / name).mkdir(parents=True)
        save_checkpoint(str(runs / name / "1.4.npz"), {"w": np.zeros(2, np.float32)}, {"epoch": 1})
    (runs / "notes").mkdir()
    with pytest.raises(DataError) as e:
        resolve_checkpoint(str(runs))
    msg = str(e.value)
    assert "holds run directories" in msg and msg.endswith(
        f"give the run: {runs / 'ConvNet__2026-01-02_10.00.00'} (or one of its 2 runs)")
    with pytest.raises(DataError, match="no checkpoint in this folder"):
        resolve_checkpoint(str(runs / "notes"))
