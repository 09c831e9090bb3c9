"""The multi-label paths (SPEC 17) and the PCEN front end on the GPU: cost.bce on CuPy against NumPy (the
logit path, unknown targets, per-class posWeight), multi-label training through the CLI on the GPU against
the CPU, and detect of a multi-label net (log-mel and PCEN features computed on the device) against the
CPU. Skipped (with the reason) where CuPy or a GPU is missing."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from convnet_cli.backend import Backend
from convnet_cli.train.checkpoint import load_checkpoint, newest_checkpoint, save_checkpoint
from tests.gpu.device import CUPY as cupy  # None without a GPU: conftest.py skips every test then
from tests.helpers import invoke
from tests.multilabel_detector import make_multilabel_batches, two_tone_checkpoint, write_recording

NET = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, neuron: relu}
pool1:  {type: pool, inputs: conv1, pool: avg, sizeX: 2}
fc2:    {type: fc, inputs: pool1, outputs: 3, neuron: logistic}
bce:    {type: cost.bce, inputs: [labels, fc2], posWeight: [1.0, 2.5, 0.5]}
"""
PARAMS = "DEFAULT: {updater: adam, epsW: 0.01, epsB: 0.01, wc: 0.0001}\n"


def test_bce_cost_and_gradients_on_gpu_match_cpu():
    from convnet_cli.net import Net

    shape = (1, 8, 9)
    cpu = Net.from_text(NET, PARAMS, shape, seed=4)
    gpu = Net.from_text(NET, PARAMS, shape, backend=Backend(cupy, "gpu:0", 0), seed=4)
    for net in (cpu, gpu):
        net.check_data(["a", "b", "c"], multi_label=True)
    rng = np.random.default_rng(5)
    for step in range(3):
        x = (rng.standard_normal((10, 8, 9, 1)) * 3).astype(np.float32)  # large logits: the fused path counts
        t = rng.integers(0, 2, (10, 3)).astype(np.float32)
        t[rng.random((10, 3)) < 0.25] = -1.0  # unknown entries: no cost, no gradient
        c = cpu.forward({0: x, 1: t}, train=True)["bce"][1]
        g = gpu.forward({0: cupy.asarray(x), 1: cupy.asarray(t)}, train=True)["bce"][1]
        assert g["cost"] == pytest.approx(c["cost"], rel=1e-5, abs=1e-6)
        assert g["error"] == pytest.approx(c["error"], abs=1e-9)
        gc, gg = cpu.backward(), gpu.backward()
        for layer, grads in gc.items():
            for k, v in grads.items():
                np.testing.assert_allclose(cupy.asnumpy(gg[layer][k]), v, rtol=1e-4, atol=1e-6,
                                           err_msg=f"{layer}/{k} at step {step}")
        cpu.update(gc, progress=step / 10)
        gpu.update(gg, progress=step / 10)
    a, b = cpu.get_arrays(), gpu.get_arrays()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-3, atol=1e-4, err_msg=k)


LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, neuron: relu}
pool1:  {type: pool, inputs: conv1, pool: avg, sizeX: 2}
fc2:    {type: fc, inputs: pool1, outputs: 2, neuron: logistic}
bce:    {type: cost.bce, inputs: [labels, fc2]}
"""
TRAIN_PARAMS = "DEFAULT: {updater: sgd, epsW: 0.01, epsB: 0.01, momW: 0.9, wc: 0.0005}\n"


def _scores(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def _compare_detects(tmp_path, ck, tag):
    outs = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / f"{tag}-{device}"
        r = invoke(["detect", "-f", str(ck), str(tmp_path / "rec"), "--out", str(out), "--quiet", "--scores",
                    "--device", device, "--batch", "16"])
        assert r.exit_code == 0, r.output
        outs[device] = out
    cpu, gpu = _scores(outs["cpu"] / "scores.csv"), _scores(outs["gpu"] / "scores.csv")
    assert len(cpu) == len(gpu) > 10
    for a, b in zip(cpu, gpu):
        assert (a["filename"], a["begin_s"]) == (b["filename"], b["begin_s"])
        for c in ("high", "low"):
            assert float(b[c]) == pytest.approx(float(a[c]), abs=2e-4), (tag, a, b)

    def events(out):  # scores may differ in the last printed digit; the events may not
        return [line.rsplit(",", 1)[0] for line in (out / "detections.csv").read_text().splitlines()]

    assert events(outs["cpu"]) == events(outs["gpu"])
    return events(outs["gpu"])


def test_multilabel_training_on_gpu_follows_cpu_then_detect_matches(tmp_path):
    batches = make_multilabel_batches(tmp_path, test_fraction=0.25, batch_size=12)
    (tmp_path / "layers.yaml").write_text(LAYERS)
    (tmp_path / "params.yaml").write_text(TRAIN_PARAMS)
    runs = {}
    for device in ("cpu", "gpu"):
        save = tmp_path / f"runs-{device}"
        r = invoke(["train", "--data-path", batches, "--save-path", str(save), "--layer-def",
                    str(tmp_path / "layers.yaml"), "--layer-params", str(tmp_path / "params.yaml"), "--mini", "6",
                    "--epochs", "3", "--device", device, "--quiet"])
        assert r.exit_code == 0, r.output
        (run,) = [p for p in save.iterdir() if p.is_dir()]
        runs[device] = newest_checkpoint(str(run))
    c, g = load_checkpoint(runs["cpu"]), load_checkpoint(runs["gpu"])
    assert c.state.get("multi_label") and g.state.get("multi_label")
    assert set(c.arrays) == set(g.arrays)
    for k in c.arrays:
        np.testing.assert_allclose(g.arrays[k], c.arrays[k], rtol=1e-3, atol=1e-4, err_msg=k)
    # the costs the two devices logged (train and test lines, mAP on the test lines) agree too
    logged = {}
    for d in runs:
        (log,) = (tmp_path / f"runs-{d}").glob("*/train_log.jsonl")
        logged[d] = [json.loads(line) for line in log.read_text().splitlines()]
        logged[d] = [(e["type"], e.get("cost"), e.get("map")) for e in logged[d] if e["type"] in ("train", "test")]
    assert len(logged["cpu"]) == len(logged["gpu"]) > 3
    for (tc, cc, mc), (tg, cg, mg) in zip(logged["cpu"], logged["gpu"]):
        assert tc == tg and cg == pytest.approx(cc, rel=1e-3)
        assert (mc is None) == (mg is None) and (mc is None or mg == pytest.approx(mc, abs=1e-3))
    _compare_detects(tmp_path, runs["gpu"], "trained")


@pytest.mark.parametrize("kind", ["logmel", "pcen"])
def test_multilabel_detect_on_gpu_matches_cpu(tmp_path, kind):
    ck = two_tone_checkpoint(tmp_path / "ck.npz")
    if kind == "pcen":  # the same net on PCEN features: its scores mean less, the devices must still agree
        z = load_checkpoint(str(ck))
        state = dict(z.state, features=dict(z.state["features"], kind="pcen"))
        ck = save_checkpoint(str(tmp_path / "pcen.npz"), z.arrays, state)
    os.makedirs(tmp_path / "rec", exist_ok=True)
    write_recording(tmp_path / "rec" / "a.wav", 30, [(2, 5, "low"), (3, 6, "high"), (12, 14, "high")], seed=3)
    write_recording(tmp_path / "rec" / "b.wav", 12, [(1, 3, "low")], seed=4)
    events = _compare_detects(tmp_path, ck, kind)
    if kind == "logmel":  # the hand-made net finds its calls: both classes, overlapping, on the GPU
        classes = {e.split(",")[3] for e in events[1:]}
        assert classes == {"high", "low"}, events
