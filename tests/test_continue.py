"""`convnet continue RUN [flags]` is `convnet train -f RUN [flags]`: the same weights after a resume from the
same checkpoint, the same flags in --help, the same errors."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tests.helpers import invoke

LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, neuron: relu}
pool1:  {type: pool, inputs: conv1, pool: max, sizeX: 2}
drop:   {type: dropout, inputs: pool1}
fc2:    {type: fc, inputs: drop, outputs: 2}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
PARAMS = "DEFAULT: {updater: adam, epsW: 0.003, epsB: 0.003, wc: 0.0001}\ndrop: {keep: 0.8}\n"


@pytest.fixture(scope="module")
def first_epoch(tiny_batches, tmp_path_factory):
    """A run trained for one epoch (seed 5), to be copied before each resume."""
    root = tmp_path_factory.mktemp("continue")
    (root / "layers.yaml").write_text(LAYERS)
    (root / "params.yaml").write_text(PARAMS)
    r = invoke(["train", "--data-path", str(tiny_batches), "--save-path", str(root / "runs"), "--layer-def",
                str(root / "layers.yaml"), "--layer-params", str(root / "params.yaml"), "--mini", "4",
                "--epochs", "1", "--seed", "5", "--quiet"])
    assert r.exit_code == 0, r.output
    (run,) = os.listdir(root / "runs")
    return root, root / "runs" / run


def _copy(run, dest):
    shutil.copytree(run, dest)
    return dest


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__state__"}


def _newest(run):
    from convnet_cli.train.checkpoint import newest_checkpoint

    return newest_checkpoint(str(run))


def test_continue_and_train_f_give_the_same_weights(first_epoch, tmp_path):
    _, run = first_epoch
    a, b = _copy(run, tmp_path / "a"), _copy(run, tmp_path / "b")
    ra = invoke(["train", "-f", str(a), "--epochs", "3", "--quiet"])
    rb = invoke(["continue", str(b), "--epochs", "3", "--quiet"])
    assert ra.exit_code == rb.exit_code == 0, (ra.output, rb.output)
    assert os.path.basename(_newest(a)) == os.path.basename(_newest(b))
    wa, wb = _arrays(_newest(a)), _arrays(_newest(b))
    assert set(wa) == set(wb) and wa
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    # the resume really trained: the weights moved from those of the first epoch
    w1 = _arrays(_newest(run))
    assert not np.array_equal(w1["conv1/weights"], wa["conv1/weights"])
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))


def test_continue_from_a_checkpoint_file_with_flags(first_epoch, tmp_path):
    _, run = first_epoch
    a, b = _copy(run, tmp_path / "a"), _copy(run, tmp_path / "b")
    name = os.path.basename(_newest(run))
    ra = invoke(["train", "-f", str(a / name), "--epochs", "2", "--test-freq", "1", "--quiet"])
    rb = invoke(["continue", str(b / name), "--quiet", "--test-freq", "1", "--epochs", "2"])
    assert ra.exit_code == rb.exit_code == 0, (ra.output, rb.output)
    wa, wb = _arrays(_newest(a)), _arrays(_newest(b))
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k


def test_continue_help_shows_the_train_flags():
    from convnet_cli.commands.train import command as train

    r = invoke(["continue", "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage: convnet continue [OPTIONS] RUN" in r.output
    assert "train -f RUN" in r.output
    flags = [o for p in train.params if p.name != "resume_path" for o in p.opts]
    assert "--epochs" in flags and "--layer-params" in flags
    for flag in flags:
        assert flag in r.output, flag
    options = r.output.split("Options:")[1]
    assert "-f " not in options  # RUN is the argument, not an option


def _norm(output, cmd):
    return output.replace(f"convnet {cmd}", "convnet CMD")


@pytest.mark.parametrize("extra", [
    ["--epochs", "0"],
    ["--train-range", "x-y"],
    ["--augment", "timeshfit"],
    ["--device", "tpu"],
    ["--bogus"],
])
def test_continue_and_train_f_fail_alike(first_epoch, tmp_path, extra):
    _, run = first_epoch
    a, b = _copy(run, tmp_path / "a"), _copy(run, tmp_path / "b")
    ra = invoke(["train", "-f", str(a), *extra, "--quiet"])
    rb = invoke(["continue", str(b), *extra, "--quiet"])
    assert ra.exit_code == rb.exit_code == 2, (ra.output, rb.output)
    assert _norm(ra.output, "train").replace(str(a), "RUN") == _norm(rb.output, "continue").replace(str(b), "RUN")
    assert len(rb.output.strip().splitlines()) == 1 and "Traceback" not in rb.output


def test_continue_refuses_a_new_layer_def_and_a_missing_run(first_epoch, tmp_path):
    root, run = first_epoch
    other = tmp_path / "other.yaml"
    other.write_text(LAYERS.replace("filters: 4", "filters: 6"))
    for args in (["--layer-def", str(other)], []):
        target = str(run) if args else str(tmp_path / "no-such-run")
        ra = invoke(["train", "-f", target, *args, "--quiet"])
        rb = invoke(["continue", target, *args, "--quiet"])
        assert ra.exit_code == rb.exit_code == 2
        assert ra.output == rb.output
    assert "cannot change on resume" in invoke(["continue", str(run), "--layer-def", str(other)]).output


def test_continue_needs_a_run():
    r = invoke(["continue"])
    assert r.exit_code == 2
    assert "Missing argument 'RUN'" in r.output


def test_command_names():
    r = invoke(["--help"])
    assert r.exit_code == 0
    listed = [line.split()[0] for line in r.output.split("Commands:")[1].splitlines() if line.strip()]
    assert "continue" in listed and "info" in listed and "continue_" not in listed
    assert "No such command" in invoke(["continue_", "x"]).output


def test_continue_refuses_another_save_path(first_epoch, tmp_path):
    """A resume writes into its own run directory: --save-path elsewhere is refused in one line (it was
    silently ignored); the run's own folder is accepted."""
    _, run = first_epoch
    a = _copy(run, tmp_path / "runs" / "a")
    before = sorted(os.listdir(a))
    for cmd in (["continue", str(a)], ["train", "-f", str(a)]):
        r = invoke([*cmd, "--save-path", str(tmp_path / "elsewhere"), "--epochs", "2", "--quiet"])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1 and "--save-path" in r.output and str(a) in r.output
        assert sorted(os.listdir(a)) == before and not (tmp_path / "elsewhere").exists()
    r = invoke(["continue", str(a), "--save-path", str(tmp_path / "runs"), "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "--save-path" in invoke(["continue", "--help"]).output.split("RUN is")[1].split("Options")[0]


def test_continuing_from_an_older_checkpoint_keeps_a_better_best(tiny_batches, tmp_path):
    """best.npz is replaced only by a test that beats the best it records, not the best the resumed (older)
    checkpoint remembers."""
    import json

    (tmp_path / "layers.yaml").write_text(LAYERS)
    (tmp_path / "params.yaml").write_text(PARAMS)
    r = invoke(["train", "--data-path", str(tiny_batches), "--save-path", str(tmp_path / "runs"), "--layer-def",
                str(tmp_path / "layers.yaml"), "--layer-params", str(tmp_path / "params.yaml"), "--mini", "2",
                "--epochs", "3", "--seed", "5", "--max-checkpoints", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    (name,) = os.listdir(tmp_path / "runs")
    run = tmp_path / "runs" / name
    tests = [json.loads(line)["cost"] for line in open(run / "train_log.jsonl") if '"test"' in line]
    assert tests[2] < tests[1] < tests[0], tests   # each epoch better: best.npz is epoch 3's
    best = (run / "best.npz").read_bytes()
    first = next(n for n in os.listdir(run) if n.startswith("1."))
    r = invoke(["continue", str(run / first), "--epochs", "2", "--quiet"])   # epoch 2 again: worse than 3
    assert r.exit_code == 0, r.output
    assert (run / "best.npz").read_bytes() == best
    r = invoke(["continue", str(run), "--epochs", "5", "--quiet"])
    assert r.exit_code == 0, r.output
    later = [json.loads(line)["cost"] for line in open(run / "train_log.jsonl") if '"test"' in line]
    from convnet_cli.train.checkpoint import read_state

    recorded = read_state(str(run / "best.npz"))["best"]
    if min(later) < tests[2]:   # a later test beat epoch 3's: it took best.npz's place
        assert recorded["metric"] == pytest.approx(min(later)) and (run / "best.npz").read_bytes() != best
    else:
        assert (run / "best.npz").read_bytes() == best


# conv2 has 4 input channels: a 3x3 conv that may run as im2col + GEMM or as Winograd F(2x2, 3x3)
WINOGRAD_LAYERS = LAYERS.replace("pool1:  {type: pool, inputs: conv1,",
                                 "conv2:  {type: conv, inputs: conv1, filters: 4, filterSize: 3, padding: 1}\n"
                                 "pool1:  {type: pool, inputs: conv2,")


def _train_with_algo(tiny_batches, root, save, monkeypatch, prefer, *extra):
    """Train in-process with the machine's own choice of conv path (layers/winograd.py's cache or timing)
    standing in as `prefer` for every shape (SMALL_FLOPS 0: every 3x3 conv has the choice)."""
    from convnet_cli.layers import winograd

    monkeypatch.setattr(winograd, "SMALL_FLOPS", 0.0)
    monkeypatch.setattr(winograd, "_choose_here", lambda key, flops, runs: (prefer, None))
    args = extra or ("train", "--data-path", str(tiny_batches), "--save-path", str(root / save), "--layer-def",
                     str(root / "layers.yaml"), "--layer-params", str(root / "params.yaml"), "--mini", "4",
                     "--seed", "5", "--quiet", "--epochs", "2")
    r = invoke(list(args))
    assert r.exit_code == 0, r.output
    return r


def test_resume_takes_the_runs_own_conv_paths_whatever_the_machine_prefers(tiny_batches, tmp_path, monkeypatch):
    """The conv path (im2col or Winograd) chosen per shape changes the bits. A run records its choices in its
    checkpoints, so a resume on a machine that prefers the other path (another CPU, a removed cache file)
    still gives the uninterrupted run's weights."""
    from convnet_cli.train.checkpoint import load_checkpoint

    monkeypatch.setenv("CONVNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVNET_CONV_ALGO", raising=False)
    (tmp_path / "layers.yaml").write_text(WINOGRAD_LAYERS)
    (tmp_path / "params.yaml").write_text(PARAMS)
    _train_with_algo(tiny_batches, tmp_path, "whole", monkeypatch, "winograd")
    other = _train_with_algo(tiny_batches, tmp_path, "direct", monkeypatch, "direct")
    assert other.exit_code == 0
    (whole,) = (tmp_path / "whole").iterdir()
    (direct,) = (tmp_path / "direct").iterdir()
    want = _arrays(_newest(whole))
    assert any(not np.array_equal(want[k], v) for k, v in _arrays(_newest(direct)).items())  # the paths differ
    assert set(load_checkpoint(_newest(whole)).state["conv_algos"].values()) == {"winograd"}

    args = ["train", "--data-path", str(tiny_batches), "--save-path", str(tmp_path / "split"), "--layer-def",
            str(tmp_path / "layers.yaml"), "--layer-params", str(tmp_path / "params.yaml"), "--mini", "4",
            "--seed", "5", "--quiet", "--epochs", "1"]
    _train_with_algo(tiny_batches, tmp_path, "split", monkeypatch, "winograd", *args)
    (split,) = (tmp_path / "split").iterdir()
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    _train_with_algo(tiny_batches, tmp_path, "split", monkeypatch, "direct", "continue", str(split), "--epochs", "2",
                     "--quiet")
    got = _arrays(_newest(split))
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


GRU_LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 3, filterSize: 3, padding: 1, neuron: relu}
gru1:   {type: gru, inputs: conv1, outputs: 5, bidirectional: 1}
last:   {type: seqpool, inputs: gru1, pool: last}
fc2:    {type: fc, inputs: last, outputs: 2}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""


@pytest.mark.parametrize("first_path", ["jit", "numpy"])
def test_resume_takes_the_runs_own_recurrent_cell_path(tiny_batches, tmp_path, monkeypatch, first_path):
    """The recurrent cells' path (numba's JIT cells or the NumPy ones) changes the bits; a run records it, so
    a resume on this machine (which prefers the JIT when numba is there) gives the uninterrupted run's
    weights whichever path the run started on."""
    pytest.importorskip("numba", reason="numba not installed (the jit extra): there is only one cell path")
    from convnet_cli.layers import recurrent_jit
    from convnet_cli.train.checkpoint import load_checkpoint

    (tmp_path / "layers.yaml").write_text(GRU_LAYERS)
    (tmp_path / "params.yaml").write_text(PARAMS.split("\n")[0] + "\n")

    def train(save, *extra, jit_env=None, epochs="2"):
        if jit_env is None:
            monkeypatch.delenv("CONVNET_JIT", raising=False)
        else:
            monkeypatch.setenv("CONVNET_JIT", jit_env)
        args = extra or ("train", "--data-path", str(tiny_batches), "--save-path", str(tmp_path / save),
                         "--layer-def", str(tmp_path / "layers.yaml"), "--layer-params",
                         str(tmp_path / "params.yaml"), "--mini", "4", "--seed", "5", "--quiet", "--epochs", epochs)
        r = invoke(list(args))
        assert r.exit_code == 0, r.output
        return next((tmp_path / save).iterdir())

    first_env = "0" if first_path == "numpy" else None
    whole = train("whole", jit_env=first_env)
    assert load_checkpoint(_newest(whole)).state["conv_algos"][recurrent_jit.CELL_KEY] == first_path
    split = train("split", jit_env=first_env, epochs="1")
    train("split", "continue", str(split), "--epochs", "2", "--quiet")  # the machine's preference: jit
    want, got = _arrays(_newest(whole)), _arrays(_newest(split))
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    other = train("other", jit_env="0" if first_path == "jit" else None)
    assert any(not np.array_equal(want[k], v) for k, v in _arrays(_newest(other)).items())  # the paths differ
