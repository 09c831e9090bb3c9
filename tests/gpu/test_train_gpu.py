"""End to end on the GPU through the CLI, on the tiny generated audio of tests/conftest.py: train with
--device gpu, resume on the CPU and back, predict on the GPU as on the CPU (batches and audio), and the
data provider's device path against its host path. Skipped (with the reason) where CuPy or a GPU is missing."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from convnet_cli.backend import CPU, get_backend
from tests.helpers import invoke as invoke_cli
from tests.gpu.device import CUPY as cupy  # None without a GPU: conftest.py skips every test then

LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, init: kaiming_normal}
bn1:    {type: batchnorm, inputs: conv1, neuron: relu}
pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 2}
gru:    {type: gru, inputs: pool1, outputs: 6}
last:   {type: seqpool, inputs: gru, pool: last}
drop:   {type: dropout, inputs: last}
fc2:    {type: fc, inputs: drop, outputs: 2, init: glorot_uniform}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
PARAMS = """\
DEFAULT: {updater: adam, epsW: 0.003, epsB: 0.003, wc: 0.0001}
gru: {clipNorm: 5}
drop: {keep: 0.8}
"""
# no dropout (its masks come from different generators on the two devices), no bias feeding a batchnorm
PLAIN = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, neuron: relu}
pool1:  {type: pool, inputs: conv1, pool: avg, sizeX: 2}
fc2:    {type: fc, inputs: pool1, outputs: 2}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
PLAIN_PARAMS = "DEFAULT: {updater: sgd, epsW: 0.01, epsB: 0.01, momW: 0.9, wc: 0.0005}\n"


def invoke(args):
    r = invoke_cli(args)
    assert r.exit_code == 0, r.output
    return r


def only_run(save):
    (run,) = [p for p in save.iterdir() if p.is_dir()]
    return run


def train(tiny_batches, tmp_path, layers, params, *extra):
    (tmp_path / "layers.yaml").write_text(layers)
    (tmp_path / "params.yaml").write_text(params)
    save = tmp_path / "runs"
    invoke(["train", "--data-path", str(tiny_batches), "--save-path", str(save), "--layer-def",
            str(tmp_path / "layers.yaml"), "--layer-params", str(tmp_path / "params.yaml"), "--mini", "4",
            "--quiet", *extra])
    return only_run(save)


def newest(run):
    from convnet_cli.train.checkpoint import newest_checkpoint

    return newest_checkpoint(str(run))


def read_probs(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {os.path.basename(r[0]): [float(v) for v in r[2:4]] for r in rows[1:]}


def test_train_on_gpu_resume_on_cpu_and_back_then_predict(tiny_batches, tiny_audio_dir, tmp_path):
    run = train(tiny_batches, tmp_path, LAYERS, PARAMS, "--epochs", "2", "--device", "gpu", "--seed", "3")
    first = newest(run)
    with np.load(first, allow_pickle=False) as z:  # host arrays, loadable anywhere
        assert "gru/weight_hh" in z.files and "gru/weight_hh/m" in z.files
    invoke(["train", "-f", str(run), "--epochs", "3", "--device", "cpu", "--quiet"])
    on_cpu = newest(run)
    assert on_cpu != first and os.path.basename(on_cpu).startswith("3.")
    invoke(["train", "-f", str(run), "--epochs", "4", "--device", "gpu", "--quiet"])
    last = newest(run)
    assert os.path.basename(last).startswith("4.")
    with np.load(last, allow_pickle=False) as z:
        assert float(z["fc2/weights/step"][0]) == 4 * 2  # 4 epochs of 2 minibatches (8 cases, --mini 4)
        assert all(np.isfinite(z[k]).all() for k in z.files if k != "__state__")

    out_gpu, out_cpu = tmp_path / "gpu.csv", tmp_path / "cpu.csv"
    invoke(["predict", "-f", last, "--data-path", str(tiny_batches), "--out", str(out_gpu), "--device", "gpu"])
    invoke(["predict", "-f", last, "--data-path", str(tiny_batches), "--out", str(out_cpu), "--device", "cpu"])
    a, b = read_probs(out_gpu), read_probs(out_cpu)
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)

    # straight from audio: the spectrograms are computed on the GPU (cupy.fft) as on the CPU
    audio_gpu, audio_cpu = tmp_path / "agpu.csv", tmp_path / "acpu.csv"
    invoke(["predict", "-f", last, str(tiny_audio_dir), "--out", str(audio_gpu), "--device", "gpu", "--multiview"])
    invoke(["predict", "-f", last, str(tiny_audio_dir), "--out", str(audio_cpu), "--device", "cpu", "--multiview"])
    a, b = read_probs(audio_gpu), read_probs(audio_cpu)
    assert a.keys() == b.keys() and len(a) == 16
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=k)


def test_training_on_gpu_follows_training_on_cpu(tiny_batches, tmp_path):
    runs = {}
    for device in ("cpu", "gpu"):
        d = tmp_path / device
        d.mkdir()
        runs[device] = train(tiny_batches, d, PLAIN, PLAIN_PARAMS, "--epochs", "3", "--device", device,
                             "--augment", "timeshift,freqmask")
    with np.load(newest(runs["cpu"])) as c, np.load(newest(runs["gpu"])) as g:
        assert set(c.files) == set(g.files)
        for k in c.files:
            if k != "__state__":
                np.testing.assert_allclose(g[k], c[k], rtol=1e-3, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("train_mode,augment", [(False, ""), (True, ""), (True, "timeshift,freqmask,timemask"),
                                                (True, "mixup")])
def test_provider_on_gpu_serves_what_the_cpu_serves(tiny_batches, train_mode, augment):
    from convnet_cli.data.batch_files import BatchSet
    from convnet_cli.data.provider import DataProvider

    bs = BatchSet(str(tiny_batches))
    gpu = get_backend("gpu")
    kw = dict(seed=5, train=train_mode, augment=augment)
    p_cpu = DataProvider(bs, bs.batch_numbers, 3, CPU, **kw)
    p_gpu = DataProvider(bs, bs.batch_numbers, 3, gpu, **kw)
    for epoch in (1, 2):
        got = [(b, [(mb.x, mb.labels, mb.filenames) for mb in mbs]) for b, mbs in p_gpu.iter_epoch(epoch)]
        want = [(b, [(mb.x, mb.labels, mb.filenames) for mb in mbs]) for b, mbs in p_cpu.iter_epoch(epoch)]
        assert [b for b, _ in got] == [b for b, _ in want]
        for (_, g), (_, w) in zip(got, want):
            assert len(g) == len(w)
            for (gx, gy, gn), (wx, wy, wn) in zip(g, w):
                assert type(gx).__module__.startswith("cupy") and gx.dtype == np.float32 and gx.flags.c_contiguous
                assert gy.dtype == wy.dtype and gn == wn
                np.testing.assert_allclose(cupy.asnumpy(gx), wx, rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(cupy.asnumpy(gy), wy, rtol=1e-6, atol=1e-7)
