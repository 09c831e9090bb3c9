"""End to end through the CLI on tiny generated audio: make-batches, train, resume, interrupt, NaN stop,
predict (batches and audio), report, and the user errors of train and predict."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from convnet_cli.demo import SR, make_clip
from tests.helpers import invoke

LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, init: kaiming_normal}
bn1:    {type: batchnorm, inputs: conv1, neuron: relu}
pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 2}
drop:   {type: dropout, inputs: pool1}
fc2:    {type: fc, inputs: drop, outputs: 2, init: glorot_uniform}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
PARAMS = """\
DEFAULT: {updater: adam, epsW: 0.003, epsB: 0.003, wc: 0.0001}
drop: {keep: 0.8}
"""
FEATURES = "sample_rate: 2000\nduration: 2.0\nkind: logmel\nn_fft: 256\nhop: 100\nn_mels: 16\nfmin: 20\nfmax: 600\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import soundfile as sf

    root = tmp_path_factory.mktemp("cli")
    audio = root / "audio"
    rng = np.random.default_rng(1)
    for label, positive in (("noise", False), ("upcall", True)):
        (audio / label).mkdir(parents=True)
        for i in range(16):
            sf.write(audio / label / f"{label}_{i:02d}.wav", make_clip(rng, positive), SR)
    (root / "layers.yaml").write_text(LAYERS)
    (root / "params.yaml").write_text(PARAMS)
    (root / "features.yaml").write_text(FEATURES)
    r = invoke(["make-batches", str(audio), str(root / "batches"), "--features", str(root / "features.yaml"),
                "--batch-size", "8", "--test-fraction", "0.25", "--jobs", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    return root


def train_args(ws, save, *extra):
    return ["train", "--data-path", str(ws / "batches"), "--save-path", str(save), "--layer-def",
            str(ws / "layers.yaml"), "--layer-params", str(ws / "params.yaml"), "--mini", "4", "--quiet", *extra]


def only_run(save):
    runs = [d for d in os.listdir(save) if d.startswith("ConvNet__")]
    assert len(runs) == 1, runs
    return os.path.join(save, runs[0])


def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__state__"}


def test_train_writes_run_directory(workspace, tmp_path):
    r = invoke(train_args(workspace, tmp_path, "--epochs", "2"))
    assert r.exit_code == 0, r.output
    run = only_run(tmp_path)
    assert os.path.basename(run).startswith("ConvNet__")
    files = set(os.listdir(run))
    assert {"best.npz", "train_log.jsonl", "layers.yaml", "params.yaml"} <= files
    numbered = sorted(f for f in files if f[0].isdigit())
    assert numbered and all(f.count(".") == 2 and f.endswith(".npz") for f in numbered)
    records = [json.loads(line) for line in open(os.path.join(run, "train_log.jsonl"))]
    kinds = {r["type"] for r in records}
    assert kinds == {"train", "test", "params"}  # params: which params file took effect when
    train = [r for r in records if r["type"] == "train"]
    assert len(train) == 2 * 3  # 3 training batch files a epoch
    for key in ("epoch", "batch", "cost", "error", "seconds", "lr", "costs"):
        assert key in train[0]
    with np.load(os.path.join(run, "best.npz"), allow_pickle=False) as z:
        state = json.loads(str(z["__state__"]))
        assert "conv1/weights" in z.files and z["conv1/weights"].shape == (4, 1, 3, 3)
        assert "conv1/weights/m" in z.files  # adam state
        assert "bn1/running_mean" in z.files
    for key in ("epoch", "batchnum", "options", "layer_def", "layer_params", "label_names", "data_shape",
                "data_mean", "data_std", "features", "rng", "history"):
        assert key in state
    assert state["label_names"] == ["noise", "upcall"]


def test_resume_is_bit_identical(workspace, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert invoke(train_args(workspace, a, "--epochs", "4", "--seed", "7")).exit_code == 0
    assert invoke(train_args(workspace, b, "--epochs", "2", "--seed", "7")).exit_code == 0
    rb = only_run(b)
    r = invoke(["train", "-f", rb, "--epochs", "4", "--quiet"])
    assert r.exit_code == 0, r.output
    from convnet_cli.train.checkpoint import newest_checkpoint

    wa, wb = arrays(newest_checkpoint(only_run(a))), arrays(newest_checkpoint(rb))
    assert set(wa) == set(wb)
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k


def test_resume_rereads_params_and_refuses_new_layer_def(workspace, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    args = train_args(workspace, tmp_path / "runs", "--epochs", "1")
    args[args.index("--layer-params") + 1] = str(params)
    assert invoke(args).exit_code == 0
    run = only_run(tmp_path / "runs")
    params.write_text(PARAMS.replace("epsW: 0.003", "epsW: 0.0005"))
    assert invoke(["train", "-f", run, "--epochs", "2", "--quiet"]).exit_code == 0
    records = [json.loads(line) for line in open(os.path.join(run, "train_log.jsonl"))]
    lrs = [r["lr"]["conv1"] for r in records if r["type"] == "train"]
    assert lrs[0] == pytest.approx(0.003) and lrs[-1] == pytest.approx(0.0005)
    other = tmp_path / "other.yaml"
    other.write_text(LAYERS.replace("filters: 4", "filters: 6"))
    r = invoke(["train", "-f", run, "--epochs", "3", "--layer-def", str(other)])
    assert r.exit_code == 2
    assert "--layer-def cannot change on resume" in r.output
    assert "Traceback" not in r.output


def test_nan_cost_stops_with_layer_name(workspace, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("DEFAULT: {updater: sgd, epsW: 1e30, epsB: 1e30, momW: 0.9}\n")
    layers = tmp_path / "l.yaml"  # no batch norm, which would hide the blow-up by renormalizing
    layers.write_text(LAYERS.replace("bn1:    {type: batchnorm, inputs: conv1, neuron: relu}\n", "")
                      .replace("inputs: bn1", "inputs: conv1"))
    args = train_args(workspace, tmp_path / "runs", "--epochs", "3", "--test-freq", "1")
    args[args.index("--layer-params") + 1] = str(params)
    args[args.index("--layer-def") + 1] = str(layers)
    r = invoke(args)
    assert r.exit_code == 1
    assert "non-finite" in r.output and "layer 'fc2' was the first" in r.output
    assert "Traceback" not in r.output
    import re

    m = re.search(r"the last good checkpoint is (\S+\.npz)", r.output)
    if m:  # the last good checkpoint stays
        assert os.path.exists(m.group(1))
    else:
        assert "no checkpoint was written yet" in r.output


def test_sigint_writes_checkpoint_and_exits_130(workspace, tmp_path):
    save = tmp_path / "runs"
    cmd = [sys.executable, "-m", "convnet_cli", *train_args(workspace, save, "--epochs", "500")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    log = None
    while time.time() < deadline:
        runs = [d for d in os.listdir(save)] if save.exists() else []
        if runs:
            log = save / runs[0] / "train_log.jsonl"
            if log.exists() and log.read_text().count("\n") >= 1:
                break
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: checkpoint written to" in err
    run = only_run(save)
    assert any(f[0].isdigit() and f.endswith(".npz") for f in os.listdir(run))
    r = invoke(["train", "-f", run, "--epochs", "1", "--quiet"])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def trained(workspace, tmp_path_factory):
    save = tmp_path_factory.mktemp("trained")
    r = invoke(train_args(workspace, save, "--epochs", "3"))
    assert r.exit_code == 0, r.output
    return only_run(save)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_predict_csv_and_report(workspace, trained, tmp_path):
    out = tmp_path / "preds.csv"
    r = invoke(["predict", "-f", trained, "--data-path", str(workspace / "batches"), "--out", str(out), "--report"])
    assert r.exit_code == 0, r.output
    rows = read_csv(out)
    assert rows[0] == ["filename", "predicted", "noise", "upcall", "true"]
    body = rows[1:]
    assert len(body) == 8  # one test batch of 8
    for row in body:
        assert row[1] in ("noise", "upcall") and row[4] in ("noise", "upcall")
        p = [float(v) for v in row[2:4]]
        assert abs(sum(p) - 1) < 2e-6 and all(len(v.split(".")[1]) == 6 for v in row[2:4])
        assert row[1] == ("noise", "upcall")[int(np.argmax(p))]
    report = json.loads((tmp_path / "report.json").read_text())
    truth = np.array([0 if r[4] == "noise" else 1 for r in body])
    pred = np.array([0 if r[1] == "noise" else 1 for r in body])
    assert report["cases"] == 8
    assert report["accuracy"] == pytest.approx(float((truth == pred).mean()))
    assert "roc_auc" in report and 0 <= report["roc_auc"] <= 1
    assert np.array(report["confusion_matrix"]).sum() == 8
    assert "accuracy" in r.output


def test_predict_audio_equals_predict_batches(workspace, trained, tmp_path):
    from convnet_cli.data.batch_files import BatchSet

    bs = BatchSet(str(workspace / "batches"))
    test_files = []
    for b in bs.test_range:
        test_files.extend(bs.load_batch(b)[2])
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert invoke(["predict", "-f", trained, "--data-path", str(workspace / "batches"), "--out", str(a)]).exit_code == 0
    paths = [str(workspace / "audio" / f) for f in test_files]
    r = invoke(["predict", "-f", trained, *paths, "--out", str(b)])
    assert r.exit_code == 0, r.output
    rows_a = {os.path.basename(r[0]): r[1:4] for r in read_csv(a)[1:]}
    rows_b = {os.path.basename(r[0]): r[1:4] for r in read_csv(b)[1:]}
    assert rows_a.keys() == rows_b.keys()
    for k in rows_a:
        assert rows_a[k][0] == rows_b[k][0]
        np.testing.assert_allclose([float(v) for v in rows_a[k][1:]], [float(v) for v in rows_b[k][1:]], atol=2e-6)
    # a folder of class-named subfolders gives true labels too
    c = tmp_path / "c.csv"
    r = invoke(["predict", "-f", trained, str(workspace / "audio"), "--out", str(c), "--multiview"])
    assert r.exit_code == 0, r.output
    rows = read_csv(c)
    assert rows[0][-1] == "true" and len(rows) == 1 + 32


@pytest.mark.parametrize("args, message", [
    (["train", "--save-path", "x", "--layer-def", "l.yaml"], "--data-path is required"),
    (["train", "--data-path", "/nonexistent/batches", "--save-path", "x", "--layer-def", "l.yaml"], "/nonexistent/batches"),
    (["predict", "-f", "/nonexistent/run", "--out", "p.csv"], "/nonexistent/run"),
    (["train", "-f", "/nonexistent/run"], "/nonexistent/run"),
])
def test_user_errors_exit_2(args, message):
    r = invoke(args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert len([l for l in r.output.splitlines() if l.strip()]) == 1


def test_bad_flags_and_configs_exit_2(workspace, tmp_path):
    r = invoke(train_args(workspace, tmp_path, "--augment", "timeshfit"))
    assert r.exit_code == 2 and "did you mean 'timeshift'" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(LAYERS.replace("filterSize: 3", "filtersize: 3"))
    args = train_args(workspace, tmp_path, "--epochs", "1")
    args[args.index("--layer-def") + 1] = str(bad)
    r = invoke(args)
    assert r.exit_code == 2
    assert "bad.yaml: layer 'conv1': unknown key 'filtersize' (did you mean 'filterSize'?)" in r.output
    r = invoke(train_args(workspace, tmp_path, "--device", "gpu:x"))
    assert r.exit_code == 2 and "--device" in r.output
    try:
        import cupy  # noqa: F401
    except Exception:  # no CuPy here: asking for the GPU is a one-line user error naming the fix
        r = invoke(train_args(workspace, tmp_path, "--device", "gpu"))
        assert r.exit_code == 2 and "pip install 'convnet[gpu]'" in r.output and "Traceback" not in r.output
    r = invoke(["--debug", *args])
    assert r.exit_code == 2 and "Traceback" in r.output


LAYERS_CFG = """\
[data]
type=data
dataIdx=0

[labels]
type=data
dataIdx=1

[conv1]
type=conv
inputs=data
filters=4
filterSize=3
padding=1
neuron=relu
partialSum=4

[pool1]
type=pool
inputs=conv1
pool=max
sizeX=2

[fc2]
type=fc
inputs=pool1
outputs=2

[probs]
type=softmax
inputs=fc2

[logprob]
type=cost.logreg
inputs=labels,probs
"""
PARAMS_CFG = """\
[DEFAULT]
epsW=0.001
epsB=0.002
momW=0.9
momB=0.9
wc=0.0001

[logprob]
coeff=1
"""


def test_train_and_predict_from_cuda_convnet_cfg(workspace, tmp_path):
    (tmp_path / "layers.cfg").write_text(LAYERS_CFG)
    (tmp_path / "params.cfg").write_text(PARAMS_CFG)
    args = train_args(workspace, tmp_path / "runs", "--epochs", "1")
    args[args.index("--layer-def") + 1] = str(tmp_path / "layers.cfg")
    args[args.index("--layer-params") + 1] = str(tmp_path / "params.cfg")
    r = invoke(args)
    assert r.exit_code == 0, r.output
    run = only_run(tmp_path / "runs")
    r = invoke(["predict", "-f", run, "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert read_csv(tmp_path / "p.csv")[0][:2] == ["filename", "predicted"]
    r = invoke(["train", "-f", run, "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output


def test_resume_after_interrupt_mid_batch_is_bit_identical(workspace, tmp_path, monkeypatch):
    """An interrupt lands between minibatches of a batch file; resuming from that checkpoint replays the
    rest of the batch exactly (shuffles, dropout masks and updater state all come back)."""
    from convnet_cli.train import trainer as tr
    from convnet_cli.train.checkpoint import newest_checkpoint

    a, b = tmp_path / "a", tmp_path / "b"
    assert invoke(train_args(workspace, a, "--epochs", "2", "--seed", "5")).exit_code == 0

    real_forward = tr.Net.forward
    calls = {"n": 0}

    class FiresAfterFiveMinibatches(tr._Interrupt):
        @property
        def requested(self):
            return calls["n"] >= 5

        @requested.setter
        def requested(self, value):
            pass

    def counting_forward(self, data, train=False, **kw):
        if train:
            calls["n"] += 1
        return real_forward(self, data, train=train, **kw)

    monkeypatch.setattr(tr, "_Interrupt", FiresAfterFiveMinibatches)
    monkeypatch.setattr(tr.Net, "forward", counting_forward)
    r = invoke(train_args(workspace, b, "--epochs", "2", "--seed", "5"))
    assert r.exit_code == 130, r.output
    monkeypatch.undo()
    run_b = only_run(b)
    state = json.loads(str(np.load(newest_checkpoint(run_b), allow_pickle=False)["__state__"]))
    assert state["minibatch"] == 1  # 8 cases a batch, minibatches of 4: the 5th is the 2nd of batch 3
    r = invoke(["train", "-f", run_b, "--quiet"])
    assert r.exit_code == 0, r.output
    wa, wb = arrays(newest_checkpoint(only_run(a))), arrays(newest_checkpoint(run_b))
    assert set(wa) == set(wb)
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
