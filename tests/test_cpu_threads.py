"""The CPU thread pool (convnet_cli/layers/cpu_threads.py): work spread over threads gives the same bits as
one thread, for every path that uses it, and errors in a worker reach the caller."""
import os
import threading

import numpy as np
import pytest

from convnet_cli.layers import conv as conv_mod
from convnet_cli.layers import cpu_threads
from convnet_cli.layers import norm as norm_mod
from convnet_cli.layers import winograd
from convnet_cli.layers.base import Context
from tests.helpers import make_layer, nhwc


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a case or two, so that the small test shapes make many chunks and blocks."""
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 1)
    monkeypatch.setattr(winograd, "WINO_CHUNK_BYTES", 1)
    monkeypatch.setattr(norm_mod, "BN_CHUNK_BYTES", 64)
    monkeypatch.setattr(cpu_threads, "SPLIT_FLOPS", 1)
    monkeypatch.setattr(cpu_threads, "BLOCKS", 5)


def _pool_works():
    return cpu_threads.parallel_threads(np, 4) > 1


def test_parallel_map_keeps_order_and_gives_each_worker_its_share(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    seen = []

    def fn(worker, item):
        seen.append((worker, item, threading.current_thread().name))
        return item * 10

    assert cpu_threads.parallel_map(fn, range(8), 3) == [i * 10 for i in range(8)]
    by_worker = {}
    for worker, item, name in seen:
        by_worker.setdefault(worker, []).append(item)
        assert (worker == 0) == (name == threading.current_thread().name)
    # contiguous shares, worker 0 (the caller) first
    assert sorted(by_worker) == [0, 1, 2]
    assert [sorted(by_worker[w]) for w in range(3)] == [[0, 1], [2, 3, 4], [5, 6, 7]]


def test_parallel_map_raises_a_workers_error_after_the_callers_share():
    done = []

    def fn(worker, item):
        if item == 5:
            raise ValueError("item 5")
        done.append(item)

    with pytest.raises(ValueError, match="item 5"):
        cpu_threads.parallel_map(fn, range(8), 2)
    # the caller's share (0-3) ran to its end before the error came back; the worker's stopped at item 5
    assert sorted(done) == [0, 1, 2, 3, 4]


def test_blocks_depend_on_the_shapes_only():
    bounds = cpu_threads.chunk_bounds(37, 2)
    assert bounds[0] == (0, 2) and bounds[-1] == (36, 37) and len(bounds) == 19
    blks = cpu_threads.blocks(bounds)
    assert len(blks) == cpu_threads.BLOCKS
    assert [b for blk in blks for b in blk] == bounds


def test_blas_is_set_to_one_thread_where_it_can_be(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    if not _pool_works():
        pytest.skip("no BLAS thread setter found in this process (not OpenBLAS/MKL/BLIS, or not Linux): "
                    "the chunks run in order and BLAS keeps its threads")
    assert cpu_threads._BLAS_ONE[os.getpid()]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads.parallel_threads(np, 4) == 1


def _run_layer(layer, x, params, dout):
    ctx = Context(xp=np, train=True)
    out, cache = layer.forward([x], params, ctx)
    dxs, grads = layer.backward(dout, cache, params, ctx)
    return [out, dxs[0]] + [grads[k] for k in sorted(grads)]


def _same_bits_at_1_and_3_threads(monkeypatch, run):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = run()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    if not _pool_works():
        pytest.skip("no BLAS thread setter found in this process: the GEMM work does not go to the pool")
    three = run()
    assert len(one) == len(three)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("algo, props, shape", [
    ("direct", dict(filters=8, filterSize=3, padding=1), (5, 9, 11)),            # transposed input gradient
    ("direct", dict(filters=6, filterSize=3, padding=1, stride=2), (4, 9, 10)),  # per-offset input gradient
    ("direct", dict(filters=4, filterSize=5, padding=2), (1, 12, 13)),           # one channel: "rows" mode
    ("direct", dict(filters=6, filterSize=3, padding=1, groups=2), (4, 8, 9)),   # groups
    ("winograd", dict(filters=8, filterSize=3, padding=1), (5, 9, 11)),
    ("direct", dict(filters=7, filterSize=1), (6, 8, 9)),                        # 1x1: one split GEMM
])
def test_conv_paths_give_the_same_bits_on_any_thread_count(monkeypatch, small_chunks, algo, props, shape):
    monkeypatch.setenv("CONVNET_CONV_ALGO", algo)
    layer = make_layer("conv", [shape], **props)
    layer.input_grads = True
    params = {k: v.astype(np.float32) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    params["biases"] = np.random.default_rng(1).standard_normal(params["biases"].shape).astype(np.float32)
    x = nhwc(shape, n=13, dtype=np.float32)
    out_shape = layer.out_shape
    dout = np.random.default_rng(2).standard_normal((13, out_shape[1], out_shape[2], out_shape[0])).astype(np.float32)
    _same_bits_at_1_and_3_threads(monkeypatch, lambda: _run_layer(layer, x, params, dout))


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gives_the_same_bits_on_any_thread_count(monkeypatch, small_chunks, train):
    layer = make_layer("batchnorm", [(6, 7, 9)])
    x = nhwc((6, 7, 9), n=11, dtype=np.float32) * 3 + 1
    dout = nhwc((6, 7, 9), n=11, seed=5, dtype=np.float32)

    def run():
        params = {k: v.copy() for k, v in layer.init_params(np.random.default_rng(0)).items()}
        ctx = Context(xp=np, train=train)
        out, cache = layer.forward([x], params, ctx)
        dxs, grads = layer.backward(dout, cache, params, ctx)
        return [out, dxs[0], grads["gamma"], grads["beta"], params["running_mean"], params["running_var"]]

    _same_bits_at_1_and_3_threads(monkeypatch, run)


def test_split_matmul_equals_one_gemm(monkeypatch, small_chunks):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    rng = np.random.default_rng(0)
    for m, k, n in ((300, 70, 20), (20, 70, 300)):  # cut by rows, then by columns
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        np.testing.assert_allclose(cpu_threads.matmul(a, b), a @ b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cpu_threads.matmul(a.T.copy().T, b), a @ b, rtol=1e-5, atol=1e-5)


def test_fc_gives_the_same_bits_on_any_thread_count(monkeypatch, small_chunks):
    layer = make_layer("fc", [(5, 4, 6)], outputs=40)
    params = {k: v.astype(np.float32) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    x = nhwc((5, 4, 6), n=70, dtype=np.float32)
    dout = np.random.default_rng(3).standard_normal((70, 1, 1, 40)).astype(np.float32)
    _same_bits_at_1_and_3_threads(monkeypatch, lambda: _run_layer(layer, x, params, dout))


def test_processes_of_one_job_on_a_node_share_its_cores(monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(cpu_threads.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(cpu_threads, "_NODE_PROCESSES", [1])
    assert cpu_threads.compute_threads() == 8
    cpu_threads.share_cores(3)
    assert cpu_threads.compute_threads() == 2
    cpu_threads.share_cores(16)
    assert cpu_threads.compute_threads() == 1
    # a launcher that bound this process to 2 of the 8 cores already gave it its share
    monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: {4, 5}, raising=False)
    assert cpu_threads.compute_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # a thread count that is set wins
    assert cpu_threads.compute_threads() == 5


@pytest.mark.parametrize("kind", ["rnorm", "cmrnorm"])
def test_response_norm_in_chunks_on_threads_equals_the_whole_batch(monkeypatch, kind):
    from convnet_cli.layers import pool as pool_mod

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(pool_mod, "CHUNK_BYTES", 1)  # one case per chunk
    layer = make_layer(kind, [(6, 5, 7)], size=3)
    x = nhwc((6, 5, 7), n=9, dtype=np.float32)
    dout = nhwc((6, 5, 7), n=9, seed=4, dtype=np.float32)
    h = layer.hyper
    ctx = Context(xp=np, train=True)
    out, cache = layer.forward([x], {}, ctx)
    (dx,), _ = layer.backward(dout, cache, {}, ctx)
    want_out, denom = norm_mod.response_norm_forward_numpy(x, kind, 3, h.minDiv, h.scale, layer.window_count, h.pow)
    want_dx = norm_mod.response_norm_backward_numpy(x, denom, want_out, dout, kind, 3, h.scale, layer.window_count,
                                                    h.pow)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(dx, want_dx)


@pytest.mark.parametrize("type_name, extra", [("lstm", {}), ("gru", {}), ("rnn", {}), ("lstm", {"bidirectional": 1})])
def test_recurrent_weight_gradients_beside_the_loop_give_the_same_bits(monkeypatch, type_name, extra):
    """The weight gradients of each block of steps run on a pool thread while the backward loop goes on
    (RecurrentLayer, _WeightGrads); on one thread they run in the loop. Same blocks, same sums."""
    layer = make_layer(type_name, [(5, 2, 19)], outputs=6, **extra)
    params = {k: v.astype(np.float32) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    x = nhwc((5, 2, 19), n=4, dtype=np.float32)
    c, h, w = layer.out_shape
    dout = np.random.default_rng(2).standard_normal((4, h, w, c)).astype(np.float32)
    _same_bits_at_1_and_3_threads(monkeypatch, lambda: _run_layer(layer, x, params, dout))


@pytest.mark.parametrize("type_name", ["lstm", "gru", "rnn"])
def test_recurrent_weight_gradients_in_blocks_beside_the_loop_give_the_same_bits(monkeypatch, type_name):
    """Blocks of steps on a pool thread beside the loop (a long sequence: here forced by a small
    MIN_BLOCK_ROWS), at 1 and 3 threads; and they give the one-block gradients to float32 rounding."""
    from convnet_cli.layers import recurrent

    layer = make_layer(type_name, [(5, 2, 19)], outputs=6)
    params = {k: v.astype(np.float32) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    x = nhwc((5, 2, 19), n=4, dtype=np.float32)
    c, h, w = layer.out_shape
    dout = np.random.default_rng(2).standard_normal((4, h, w, c)).astype(np.float32)
    whole = _run_layer(layer, x, params, dout)
    monkeypatch.setattr(recurrent._WeightGrads, "MIN_BLOCK_ROWS", 1)
    _same_bits_at_1_and_3_threads(monkeypatch, lambda: _run_layer(layer, x, params, dout))
    for a, b in zip(whole, _run_layer(layer, x, params, dout)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("type_name", ["lstm", "rnn"])
def test_a_short_sequence_takes_its_weight_gradients_in_split_gemms_with_the_same_bits(monkeypatch, type_name):
    """Few steps and cases (neon's whale BiRNN: 10 steps of 16): one block after the loop, its GEMMs cut
    over the threads by their shapes (forced to cut here by SPLIT_FLOPS 0): the same bits on any thread count."""
    from convnet_cli.layers import cpu_threads, recurrent

    layer = make_layer(type_name, [(130, 1, 6)], outputs=4, bidirectional=1)
    params = {k: v.astype(np.float32) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    x = nhwc((130, 1, 6), n=3, dtype=np.float32)
    c, h, w = layer.out_shape
    dout = np.random.default_rng(2).standard_normal((3, h, w, c)).astype(np.float32)
    monkeypatch.setattr(cpu_threads, "SPLIT_FLOPS", 0)
    seen = []
    real = recurrent._WeightGrads._block
    monkeypatch.setattr(recurrent._WeightGrads, "_block", lambda self, k: (seen.append(self.whole), real(self, k)))
    _same_bits_at_1_and_3_threads(monkeypatch, lambda: _run_layer(layer, x, params, dout))
    assert seen and all(seen)


@pytest.mark.parametrize("type_name", ["lstm", "gru"])
def test_recurrent_jit_case_chunks_give_the_same_bits(monkeypatch, type_name):
    """The numba cells (the `jit` extra) run each chunk of cases' whole step loop on its own pool thread
    (recurrent.py run_case_chunks): 40 cases make three chunks; one thread or three, the same bits."""
    pytest.importorskip("numba", reason="numba not installed (the jit extra): no JIT cells to check")
    from convnet_cli.layers import recurrent_jit

    layer = make_layer(type_name, [(5, 2, 9)], outputs=6, bidirectional=1)
    params = {k: v.astype(np.float32) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    x = nhwc((5, 2, 9), n=40, dtype=np.float32)
    c, h, w = layer.out_shape
    dout = np.random.default_rng(2).standard_normal((40, h, w, c)).astype(np.float32)

    def run():
        ctx = Context(xp=np, train=True, algos={recurrent_jit.CELL_KEY: "jit"})
        out, cache = layer.forward([x], params, ctx)
        assert cache[1][0][-1] is True  # the JIT path ran
        dxs, grads = layer.backward(dout, cache, params, ctx)
        return [out, dxs[0]] + [grads[k] for k in sorted(grads)]

    _same_bits_at_1_and_3_threads(monkeypatch, run)


def test_where_blas_cannot_be_set_to_one_thread_the_gemm_chunks_run_in_order(monkeypatch, small_chunks):
    """Another BLAS (or OS) without a thread setter: no GEMM work goes to the pool (BLAS keeps its own
    threads), element-wise work still does, and the results are the same bits."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setitem(cpu_threads._BLAS_ONE, os.getpid(), False)
    assert cpu_threads.parallel_threads(np, 8) == 1
    assert cpu_threads.elementwise_threads(np, 8) == 3
    layer = make_layer("conv", [(5, 9, 11)], filters=8, filterSize=3, padding=1)
    layer.input_grads = True
    params = {k: v.astype(np.float32) for k, v in layer.init_params(np.random.default_rng(0)).items()}
    x = nhwc((5, 9, 11), n=13, dtype=np.float32)
    dout = np.random.default_rng(2).standard_normal((13, 9, 11, 8)).astype(np.float32)
    monkeypatch.setenv("CONVNET_CONV_ALGO", "direct")
    fallback = _run_layer(layer, x, params, dout)
    monkeypatch.setitem(cpu_threads._BLAS_ONE, os.getpid(), True)
    pooled = _run_layer(layer, x, params, dout)
    for a, b in zip(fallback, pooled):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", ["²", "٣", "4.0", "many", "0", "-2"])
def test_a_thread_count_that_is_not_a_whole_number_is_ignored_with_one_warning(monkeypatch, capsys, small_chunks,
                                                                              value):
    """OMP_NUM_THREADS='²' (a non-ASCII digit that str.isdigit accepts, int() not) raised a ValueError deep in
    a layer: now the setting is ignored (the cores count instead) with one warning naming it."""
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "_WARNED", set(), raising=False)
    assert cpu_threads.compute_threads() >= 1
    layer = make_layer("batchnorm", [(3, 4, 5)])
    x = nhwc((3, 4, 5), n=6, dtype=np.float32)
    layer.forward([x], layer.init_params(np.random.default_rng(0)), Context(xp=np, train=True))
    cpu_threads.compute_threads()
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and "OMP_NUM_THREADS" in lines[0] and "ignored" in lines[0], lines


def test_an_openmp_list_takes_its_first_number(monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")
    assert cpu_threads.compute_threads() == 3
    assert capsys.readouterr().err == ""
