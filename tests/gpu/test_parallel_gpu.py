"""The data-parallel code on CuPy (skipped without CuPy and a GPU): batchnorm split over 'processes'
(threads summing through ctx.allreduce) against the whole minibatch on NumPy, the one-sum-per-step packing
on device arrays, a real NCCL communicator of one rank made as MPIWorld.attach makes it, and
`mpiexec -n 2 convnet train --device gpu` against one GPU process (skipped without mpi4py and mpiexec)."""
from __future__ import annotations

import numpy as np
import pytest

from convnet_cli.backend import Backend
from convnet_cli.layers.base import Context
from convnet_cli.parallel import NcclSum, shares
from tests.gpu.device import CUPY as cupy
from tests.helpers import make_layer
from tests.parallel_fakes import run_ranks
from tests.test_mpi import check_combine, needs_mpi, two_ranks_against_one


def test_batchnorm_split_on_the_gpu_matches_one_cpu_process():
    layer = make_layer("batchnorm", [(3, 4, 5)])
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (7, 4, 5, 3)).astype(np.float32)
    dout = rng.normal(0.0, 1.0, x.shape).astype(np.float32)
    fresh = lambda: layer.init_params(np.random.default_rng(1))  # noqa: E731
    whole = {k: v.copy() for k, v in fresh().items()}
    ctx = Context(xp=np, train=True)
    out, cache = layer.forward([x], whole, ctx)
    (dx,), grads = layer.backward(dout, cache, whole, ctx)
    params = [{k: cupy.asarray(v) for k, v in fresh().items()} for _ in range(2)]

    def rank(r, allreduce):
        lo, hi = shares(7, 2)[r]
        c = Context(xp=cupy, train=True, allreduce=allreduce)
        o, cache_r = layer.forward([cupy.asarray(x[lo:hi])], params[r], c)
        (d,), g = layer.backward(cupy.asarray(dout[lo:hi]), cache_r, params[r], c)
        return cupy.asnumpy(o), cupy.asnumpy(d), {k: cupy.asnumpy(v) for k, v in g.items()}

    parts = run_ranks(2, rank)
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), dx, rtol=1e-4, atol=1e-5)
    for k in grads:
        np.testing.assert_allclose(parts[0][2][k] + parts[1][2][k], grads[k], rtol=1e-5, atol=1e-5)
    for k in whole:
        np.testing.assert_allclose(cupy.asnumpy(params[0][k]), whole[k], rtol=1e-6, atol=1e-6)


def test_combine_on_device_arrays():
    check_combine(Backend(cupy, "gpu:0", 0))


def test_a_one_rank_nccl_communicator_sums_in_place():
    from cupy.cuda import nccl

    world = type("W", (), {"rank": 0, "size": 1, "bcast": lambda self, obj, root=0: obj})()
    s = NcclSum.create(world, nccl, cupy, 0)
    for dtype in (np.float32, np.float64):
        buf = cupy.arange(10, dtype=dtype)
        assert s.allreduce(buf) is buf
        cupy.cuda.get_current_stream().synchronize()
        np.testing.assert_array_equal(cupy.asnumpy(buf), np.arange(10, dtype=dtype))


@needs_mpi
@pytest.mark.parametrize("dropout", [False, True], ids=["no dropout", "dropout"])
def test_two_ranks_on_the_gpu_reach_one_gpu_process(tmp_path, dropout):
    """`mpiexec -n 2 convnet train --device gpu` against one GPU process: the starter net's fused batchnorm
    relu, max pooling and (parametrized) dropout, SGD, 8 steps of 32 cases. On a machine with one GPU both
    ranks share it, so the sums go through host memory and MPI (NCCL takes one process per GPU): the run says
    so and still gives one process's costs and weights."""
    two = two_ranks_against_one(tmp_path, dropout, "--device", "gpu", timeout=300)
    if cupy.cuda.runtime.getDeviceCount() == 1:
        assert "share the GPU" in two.stderr, two.stderr
