"""Data-parallel runs under MPI (convnet_cli/parallel.py, train/data_parallel.py): 2 ranks launched with
`mpiexec -n 2 python -m convnet_cli ...` give the weights of one process, one run directory, resume in one
process, the same batch files; and a single process never imports mpi4py. The world's logic (launch
detection, shares, the NCCL id broadcast and buffer arguments) is tested in-process with stand-ins.

The 2-rank tests skip with a reason when mpi4py or mpiexec is missing."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest

from convnet_cli.data.batch_files import encode_batch
from convnet_cli.fileio import write_pickle_atomic
from convnet_cli.layers.base import Context
from convnet_cli.parallel import NcclSum, SingleWorld, launch_from_env, rank_device, shares
from convnet_cli.train.data_parallel import SlicedRandom
from tests.helpers import make_layer
from tests.parallel_fakes import run_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _find_mpiexec() -> str | None:
    """mpiexec on PATH, else beside this Python's scripts (where `pip install mpich` puts it)."""
    found = shutil.which("mpiexec")
    if found is None:
        found = shutil.which("mpiexec", path=sysconfig.get_path("scripts"))
    return found


MPIEXEC = _find_mpiexec()


def _mpi_missing() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'convnet[mpi]' mpich)"
    if MPIEXEC is None:
        return "no mpiexec on PATH or among this Python's scripts (pip install mpich)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))

# batchnorm after the ReLU: a bias right before batchnorm has a zero gradient in exact arithmetic, which Adam
# would turn from rounding noise into steps of +-epsB, in one process as in two
LAYERS = """\
data:   {type: data, dataIdx: 0}
labels: {type: data, dataIdx: 1}
conv1:  {type: conv, inputs: data, filters: 4, filterSize: 3, padding: 1, init: kaiming_normal, neuron: relu}
bn1:    {type: batchnorm, inputs: conv1}
pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 2}
drop:   {type: dropout, inputs: pool1}
fc2:    {type: fc, inputs: drop, outputs: 3, init: glorot_uniform}
probs:  {type: softmax, inputs: fc2}
logprob: {type: cost.logreg, inputs: [labels, probs]}
"""
PARAMS = """\
DEFAULT: {updater: adam, epsW: 0.01, epsB: 0.01, wc: 0.0001}
drop: {keep: 0.7}
"""


def write_batches(folder, n_batches=3, per_batch=10, shape=(1, 8, 8), classes=3, seed=0):
    """Gaussian cases whose mean depends on the class; the last batch is the test range."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_vis = int(np.prod(shape))
    rows_all = []
    for b in range(1, n_batches + 1):
        labels = rng.integers(0, classes, per_batch)
        rows = (rng.normal(0, 1, (per_batch, num_vis)) + labels[:, None] * 0.7 + 3.0).astype(np.float32)
        batch, seen = encode_batch(rows.T, labels, [f"b{b}c{k}" for k in range(per_batch)], "float32")
        write_pickle_atomic(folder / f"data_batch_{b}", batch)
        rows_all.append(seen.T)
    train = np.concatenate(rows_all[:-1]).astype(np.float64)
    write_pickle_atomic(folder / "batches.meta", {
        "label_names": [f"k{i}" for i in range(classes)], "num_vis": num_vis, "data_shape": list(shape),
        "num_cases_per_batch": per_batch, "num_batches": n_batches, "train_range": [1, n_batches - 1],
        "test_range": [n_batches, n_batches], "data_mean": train.mean(axis=0).astype(np.float32).reshape(-1, 1),
        "data_std": train.std(axis=0).astype(np.float32).reshape(-1, 1), "features": None, "skipped": 0,
        "batch_cases": [per_batch] * n_batches})


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpi")
    write_batches(root / "batches")
    (root / "layers.yaml").write_text(LAYERS)
    (root / "params.yaml").write_text(PARAMS)
    return root


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def convnet(args, ranks=1, timeout=120, **kw):
    """`python -m convnet_cli ARGS`, under `mpiexec -n RANKS` when RANKS > 1: a CompletedProcess."""
    cmd = [sys.executable, "-m", "convnet_cli", *args]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT, **kw)


def train_args(ws, save, *extra):
    # --mini 3 over batches of 10: minibatches of 3, 3, 3 and 1 (the last smaller than the 2 ranks)
    return ["train", "--data-path", str(ws / "batches"), "--save-path", str(save), "--layer-def",
            str(ws / "layers.yaml"), "--layer-params", str(ws / "params.yaml"), "--mini", "3", "--seed", "5",
            *extra]


def weights(run_dir, epoch):
    """The arrays of the checkpoint written at the end of `epoch`."""
    names = [n for n in os.listdir(run_dir) if n.startswith(f"{epoch}.") and n.endswith(".npz")]
    assert len(names) == 1, os.listdir(run_dir)
    with np.load(os.path.join(run_dir, names[0]), allow_pickle=False) as z:
        return {k: z[k] for k in z.files if not k.startswith("__")}


def assert_same_weights(a, b, rtol=2e-4, atol=2e-5):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


def only_run(save):
    runs = glob.glob(os.path.join(save, "ConvNet__*"))
    assert len(runs) == 1, runs
    return runs[0]


# -- in-process: the world's logic --------------------------------------------------------------------
def test_launch_detection_from_the_environment():
    assert launch_from_env({}) is None
    assert launch_from_env({"PMI_SIZE": "1", "PMI_RANK": "0"}) is None
    assert launch_from_env({"PMI_SIZE": "4", "PMI_RANK": "2", "MPI_LOCALRANKID": "0"}) == (4, 2, 0, "MPICH/Intel MPI mpiexec")
    assert launch_from_env({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1",
                            "OMPI_COMM_WORLD_LOCAL_RANK": "1"})[:3] == (2, 1, 1)
    # an sbatch script of a 4-task job is one process; srun's step with 4 tasks is 4
    assert launch_from_env({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) is None
    assert launch_from_env({"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3",
                            "SLURM_LOCALID": "1"})[:3] == (4, 3, 1)
    assert launch_from_env({"PMI_SIZE": "2", "PMI_RANK": "1", "CONVNET_MPI": "0"}) is None


def test_shares_cover_the_minibatch_in_rank_order():
    for n in (1, 2, 3, 7, 128):
        for k in (1, 2, 3, 8):
            s = shares(n, k)
            assert s[0][0] == 0 and s[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(s, s[1:]))
            sizes = [hi - lo for lo, hi in s]
            assert max(sizes) - min(sizes) <= 1


def test_sliced_random_gives_the_rows_of_the_whole_minibatch():
    whole = np.random.default_rng(7).random((5, 2, 3), dtype=np.float32)
    part = SlicedRandom(np.random.default_rng(7), 2, 4, 5).random((2, 2, 3), dtype=np.float32)
    np.testing.assert_array_equal(part, whole[2:4])
    with pytest.raises(ValueError):
        SlicedRandom(np.random.default_rng(7), 2, 4, 5).random((3, 2, 3))


@pytest.mark.parametrize("n,k", [(6, 2), (7, 3)])
def test_batchnorm_split_over_processes_matches_one(n, k):
    """Forward and backward of a batchnorm whose minibatch is split over k 'processes' (threads summing
    through ctx.allreduce) equal the whole minibatch's in one: outputs, dx, summed parameter gradients and
    running statistics."""
    layer = make_layer("batchnorm", [(3, 4, 5)])
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (n, 4, 5, 3)).astype(np.float32)
    dout = rng.normal(0.0, 1.0, x.shape).astype(np.float32)
    fresh = lambda: {key: v.copy() for key, v in layer.init_params(np.random.default_rng(1)).items()}  # noqa: E731
    whole = fresh()
    ctx = Context(xp=np, train=True)
    out, cache = layer.forward([x], whole, ctx)
    (dx,), grads = layer.backward(dout, cache, whole, ctx)
    params = [fresh() for _ in range(k)]

    def rank(r, allreduce):
        lo, hi = shares(n, k)[r]
        c = Context(xp=np, train=True, allreduce=allreduce)
        o, cache_r = layer.forward([x[lo:hi]], params[r], c)
        (d,), g = layer.backward(dout[lo:hi], cache_r, params[r], c)
        return o, d, g

    parts = run_ranks(k, rank)
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), dx, rtol=1e-4, atol=1e-5)
    for key in grads:
        np.testing.assert_allclose(sum(p[2][key] for p in parts), grads[key], rtol=1e-5, atol=1e-5)
    for r in range(k):
        for key in whole:
            np.testing.assert_allclose(params[r][key], whole[key], rtol=1e-6, atol=1e-6)


class _DoublingWorld:
    """Rank 0 of 2 whose partner holds the same numbers: a sum is twice the buffer."""

    rank, size, local_rank, is_root = 0, 2, 0, True

    def __init__(self):
        self.calls = 0

    def attach(self, backend):
        pass

    def allreduce(self, buf):
        self.calls += 1
        buf *= 2
        return buf


def check_combine(backend):
    """DataParallel.share + combine on a small net: one sum per step over gradients, costs and the stop
    flag; the costs come back as the whole minibatch's means. Used for the CPU and (tests/gpu) the GPU."""
    from convnet_cli.data.provider import Minibatch
    from convnet_cli.net import Net
    from convnet_cli.train.data_parallel import DataParallel

    xp = backend.xp
    net = Net.from_text(LAYERS, PARAMS, (1, 8, 8), backend, seed=0)
    world = _DoublingWorld()
    dp = DataParallel(world, net)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.normal(size=(6, 8, 8, 1)).astype(np.float32))
    y = backend.asarray(np.array([0, 1, 2, 0, 1, 2]), dtype=np.int32)
    xs, ys, drng = dp.share(Minibatch(x, y, []), backend.rng(3))
    assert xs.shape[0] == 3 and dp.grad_scale == 0.5
    costs = net.forward({0: xs, 1: ys}, train=True, rng=drng, allreduce=dp.allreduce)
    grads = net.backward(grad_scale=dp.grad_scale)
    local = {k: {p: xp.asnumpy(g) if backend.is_gpu else g.copy() for p, g in v.items()} for k, v in grads.items()}
    calls_before = world.calls                    # batchnorm's sums in forward and backward
    assert calls_before == 2
    intr = type("I", (), {"requested": True})()
    summed = dp.combine(grads, costs, 6, intr)
    assert world.calls == calls_before + 1        # one sum for the whole step
    for name, ps in local.items():
        for p, g in ps.items():
            if p in net.by_name[name].learned:
                got = xp.asnumpy(grads[name][p]) if backend.is_gpu else grads[name][p]
                np.testing.assert_allclose(got, 2 * g, rtol=1e-6, err_msg=f"{name}/{p}")
    cost, metrics = summed["logprob"]
    assert cost == pytest.approx(costs["logprob"][0], rel=1e-6)   # 2 x (3 cases x mean) / 6 cases
    assert dp.stop is True and dp.stop_requested(type("I", (), {"requested": False})()) is True


def test_combine_sums_gradients_costs_and_the_stop_flag_in_one_allreduce():
    from convnet_cli.backend import CPU

    check_combine(CPU)


def test_rank_device_takes_a_gpu_by_local_rank(monkeypatch):
    import convnet_cli.backend as backend

    world = type("W", (), {"size": 4, "local_rank": 3})()
    monkeypatch.setattr(backend, "gpu_count", lambda: 2)
    assert rank_device("gpu", world) == "gpu:1"
    assert rank_device("auto", world) == "gpu:1"
    assert rank_device("gpu:0", world) == "gpu:0"     # given explicitly: kept
    assert rank_device("cpu", world) == "cpu"
    monkeypatch.setattr(backend, "gpu_count", lambda: 0)
    assert rank_device("auto", world) == "cpu"


def test_single_world_is_the_identity():
    w = SingleWorld()
    buf = np.arange(3.0)
    assert w.allreduce(buf) is buf and w.bcast("x") == "x" and w.gather(1) == [1]
    assert rank_device("gpu", w) == "gpu"


class _FakeNccl:
    """cupy.cuda.nccl as NcclSum uses it."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    made = []

    @staticmethod
    def get_unique_id():
        return (1, 2, 3)

    class NcclCommunicator:
        def __init__(self, size, uid, rank):
            _FakeNccl.made.append((size, uid, rank))
            self.calls = []

        def allReduce(self, send, recv, count, dtype, op, stream):
            self.calls.append((send, recv, count, dtype, op, stream))


class _FakeCupy:
    class cuda:
        devices = []

        class Device:
            def __init__(self, i):
                _FakeCupy.cuda.devices.append(i)

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

        class _Stream:
            ptr = 99

        @staticmethod
        def get_current_stream():
            return _FakeCupy.cuda._Stream()


class _FakeWorld:
    def __init__(self, rank, size, root_value):
        self.rank, self.size, self.root_value = rank, size, root_value

    def bcast(self, obj, root=0):
        return obj if self.rank == root else self.root_value


class _DeviceBuffer:
    def __init__(self, n, dtype):
        self.size, self.dtype = n, np.dtype(dtype)
        self.data = type("mem", (), {"ptr": 1234})()


def test_nccl_communicator_from_the_broadcast_id_and_in_place_sum():
    _FakeNccl.made.clear()
    root = NcclSum.create(_FakeWorld(0, 2, None), _FakeNccl, _FakeCupy, device_id=0)
    other = NcclSum.create(_FakeWorld(1, 2, (1, 2, 3)), _FakeNccl, _FakeCupy, device_id=1)
    # every rank joins with rank 0's id, on its own device
    assert _FakeNccl.made == [(2, (1, 2, 3), 0), (2, (1, 2, 3), 1)]
    assert _FakeCupy.cuda.devices[-2:] == [0, 1]
    buf = _DeviceBuffer(10, np.float32)
    assert other.allreduce(buf) is buf
    assert other.comm.calls == [(1234, 1234, 10, _FakeNccl.NCCL_FLOAT32, _FakeNccl.NCCL_SUM, 99)]
    root.allreduce(_DeviceBuffer(4, np.float64))
    assert root.comm.calls[0][3] == _FakeNccl.NCCL_FLOAT64
    with pytest.raises(TypeError):
        root.allreduce(_DeviceBuffer(4, np.int32))


class _FakeMPI:
    IN_PLACE, SUM, COMM_TYPE_SHARED = object(), object(), 0


class _FakeComm:
    """Rank 0 of 2 whose partner holds the same numbers."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 2

    def Split_type(self, *a, **k):
        raise NotImplementedError  # an MPI without shared-memory communicators: local rank = rank

    def allgather(self, obj):
        return [obj, obj]

    def Allreduce(self, inplace, buf, op):
        assert inplace is _FakeMPI.IN_PLACE and op is _FakeMPI.SUM
        buf *= 2


class _HostBackedDeviceArray:
    def __init__(self, a):
        self.a = a

    def get(self):
        return self.a.copy()

    def set(self, host):
        self.a[...] = host


def test_without_nccl_device_sums_go_through_host_memory(monkeypatch, capsys):
    from convnet_cli.parallel import MPIWorld

    monkeypatch.setitem(sys.modules, "cupy", None)     # CuPy (and its NCCL) cannot be imported
    world = MPIWorld(_FakeComm(), _FakeMPI)
    assert (world.rank, world.size, world.local_rank) == (0, 2, 0)
    world.attach(type("GPU", (), {"is_gpu": True, "xp": None, "device_id": 0})())
    assert world.nccl is None and "NCCL is not available" in capsys.readouterr().err
    buf = _HostBackedDeviceArray(np.arange(3, dtype=np.float32))
    assert world.allreduce(buf) is buf
    np.testing.assert_array_equal(buf.a, [0, 2, 4])
    host = np.ones(2)
    assert world.allreduce(host) is host and host.tolist() == [2, 2]


class _BusCupy:
    """cupy with cupy.cuda.nccl and the PCI bus id of each device: `buses` maps device number -> bus id."""

    buses = {0: "0000:19:00.0", 1: "0000:3B:00.0"}

    class cuda:
        nccl = _FakeNccl

        class Device:
            def __init__(self, i):
                self.pci_bus_id = _BusCupy.buses[i]

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False


class _PartnerComm(_FakeComm):
    """Rank 0 of 2 whose partner's allgather entry is `partner(own entry)`."""

    def __init__(self, partner):
        self.partner = partner

    def allgather(self, obj):
        return [obj, self.partner(obj)]

    def bcast(self, obj, root=0):
        return obj


def _fake_cupy_modules(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _BusCupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", _BusCupy.cuda)


def test_two_processes_on_one_gpu_sum_through_host_memory(monkeypatch, capsys):
    """NCCL refuses two ranks of one device: with more processes than GPUs the sums go through MPI."""
    from convnet_cli.parallel import MPIWorld

    _fake_cupy_modules(monkeypatch)
    _FakeNccl.made.clear()
    world = MPIWorld(_PartnerComm(lambda own: own), _FakeMPI)   # the partner reports the same host and GPU
    world.attach(type("GPU", (), {"is_gpu": True, "xp": _BusCupy, "device_id": 0})())
    err = capsys.readouterr().err
    assert world.nccl is None and _FakeNccl.made == []
    assert "2 processes share the GPU 0000:19:00.0" in err and "one process per GPU" in err
    buf = _HostBackedDeviceArray(np.arange(3, dtype=np.float32))
    world.allreduce(buf)
    np.testing.assert_array_equal(buf.a, [0, 2, 4])


def test_processes_on_their_own_gpus_open_nccl(monkeypatch, capsys):
    from convnet_cli.parallel import MPIWorld, device_place

    _fake_cupy_modules(monkeypatch)
    _FakeNccl.made.clear()
    gpu0 = type("GPU", (), {"is_gpu": True, "xp": _BusCupy, "device_id": 0})()
    gpu1 = type("GPU", (), {"is_gpu": True, "xp": _BusCupy, "device_id": 1})()
    assert device_place(gpu0)[1] == "0000:19:00.0" and device_place(gpu0) != device_place(gpu1)
    # the partner: the same host, the other GPU (a bool from the NCCL availability round stays a bool)
    world = MPIWorld(_PartnerComm(lambda own: device_place(gpu1) if isinstance(own, tuple) else own), _FakeMPI)
    world.attach(gpu0)
    assert world.nccl is not None and _FakeNccl.made == [(2, (1, 2, 3), 0)]
    assert "share" not in capsys.readouterr().err


def test_one_process_never_imports_mpi4py(ws, tmp_path):
    code = ("import sys, runpy; sys.argv = ['convnet'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('convnet_cli', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "import convnet_cli.commands.make_batches\n"
            "print('mpi4py' in sys.modules)\n")
    env = {k: v for k, v in _env().items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MV2_", "SLURM_"))}
    r = subprocess.run([sys.executable, "-c", code, *train_args(ws, tmp_path / "runs", "--epochs", "1", "--quiet")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


# -- 2 ranks ----------------------------------------------------------------------------------------------
@needs_mpi
def test_two_ranks_reach_the_weights_of_one_process(ws, tmp_path):
    one = convnet(train_args(ws, tmp_path / "one", "--epochs", "2", "--quiet"))
    assert one.returncode == 0, one.stderr
    two = convnet(train_args(ws, tmp_path / "two", "--epochs", "2"), ranks=2)
    assert two.returncode == 0, two.stderr + two.stdout
    run1, run2 = only_run(tmp_path / "one"), only_run(tmp_path / "two")   # one run directory
    assert sorted(os.listdir(run1)) == sorted(os.listdir(run2))
    assert_same_weights(weights(run1, 2), weights(run2, 2))
    # the log: costs of the whole minibatches, written once
    log1, log2 = ([r for r in map(json.loads, open(os.path.join(run, "train_log.jsonl")))
                   if r["type"] in ("train", "test")] for run in (run1, run2))
    assert [(r["type"], r["epoch"], r["batch"], r["cases"]) for r in log1] == \
           [(r["type"], r["epoch"], r["batch"], r["cases"]) for r in log2]
    for a, b in zip(log1, log2):
        assert a["cost"] == pytest.approx(b["cost"], rel=1e-4)
    # rank 0 alone prints: one run-directory line, one summary line per test
    assert two.stderr.count("run directory:") == 1
    assert two.stderr.count("done: best test") == 1
    assert "data-parallel over 2 processes" in two.stderr


@needs_mpi
def test_a_two_rank_run_resumes_in_one_process(ws, tmp_path):
    whole = convnet(train_args(ws, tmp_path / "whole", "--epochs", "3", "--quiet"))
    assert whole.returncode == 0, whole.stderr
    first = convnet(train_args(ws, tmp_path / "split", "--epochs", "1", "--quiet"), ranks=2)
    assert first.returncode == 0, first.stderr
    run = only_run(tmp_path / "split")
    second = convnet(["train", "-f", run, "--epochs", "2", "--quiet"])
    assert second.returncode == 0, second.stderr
    third = convnet(["train", "-f", run, "--epochs", "3", "--quiet"], ranks=2)
    assert third.returncode == 0, third.stderr
    assert_same_weights(weights(only_run(tmp_path / "whole"), 3), weights(run, 3))


@needs_mpi
@pytest.mark.skipif(shutil.which("pgrep") is None, reason="pgrep (procps) is needed to find one rank's process")
def test_ctrl_c_on_one_rank_stops_both_with_one_checkpoint(ws, tmp_path):
    save = tmp_path / "runs"
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "convnet_cli",
                             *train_args(ws, save, "--epochs", "500", "--quiet")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        log = None
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until training is under way (the first batch is logged)
            found = glob.glob(os.path.join(save, "ConvNet__*", "train_log.jsonl"))
            if found and os.path.getsize(found[0]) > 0:
                log = found[0]
                break
            time.sleep(0.1)
        assert log, "training did not start"
        # the two ranks: the processes whose command line names this run's save path, but for mpiexec
        found = subprocess.run(["pgrep", "-f", str(save)], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split() if int(p) != proc.pid]
        assert len(pids) == 2, found.stdout
        os.kill(max(pids), signal.SIGINT)   # one rank only
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.count("interrupted: checkpoint written to") == 1
    run = only_run(save)
    ckpts = [n for n in os.listdir(run) if n.endswith(".npz") and n != "best.npz"]
    assert len(ckpts) >= 1
    resumed = convnet(["train", "-f", run, "--epochs", "1", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr


@needs_mpi
def test_a_user_error_is_reported_once_and_ends_both_ranks(ws, tmp_path):
    args = train_args(ws, tmp_path / "runs", "--quiet")
    args[args.index("--layer-params") + 1] = str(tmp_path / "missing.yaml")
    r = convnet(args, ranks=2, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("convnet: error:") == 1
    assert "missing.yaml" in r.stderr
    assert not (tmp_path / "runs").exists()


@needs_mpi
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_make_batches_with_two_ranks_writes_the_files_of_one(tmp_path, dtype):
    from tests.audio_fixtures import make_tone_dataset

    audio = tmp_path / "audio"
    make_tone_dataset(audio, classes=("low", "high"), per_class=7, sr=8000, seconds=0.5, seed=3)
    (audio / "low" / "broken.wav").write_bytes(b"RIFF not audio")   # listed in skipped.txt by both
    args = ["--sample-rate", "8000", "--duration", "0.5", "--n-fft", "256", "--hop", "128", "--n-mels", "16",
            "--batch-size", "3", "--test-fraction", "0.3", "--jobs", "1", "--dtype", dtype, "--quiet"]
    one = convnet(["make-batches", str(audio), str(tmp_path / "one"), *args])
    assert one.returncode == 0, one.stderr
    two = convnet(["make-batches", str(audio), str(tmp_path / "two"), *args], ranks=2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("make-batches:") == 1           # rank 0 alone prints the summary
    names = sorted(os.listdir(tmp_path / "one"))
    assert names == sorted(os.listdir(tmp_path / "two"))
    assert "data_batch_5" in names and "skipped.txt" in names
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@needs_mpi
def test_make_batches_with_two_ranks_refuses_a_full_folder_once(tmp_path):
    from tests.audio_fixtures import make_tone_dataset

    audio = tmp_path / "audio"
    make_tone_dataset(audio, classes=("low", "high"), per_class=2, sr=8000, seconds=0.5, seed=3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "data_batch_1").write_bytes(b"old")
    r = convnet(["make-batches", str(audio), str(tmp_path / "out"), "--jobs", "1", "--quiet"], ranks=2)
    assert r.returncode == 2
    assert r.stderr.count("already holds batch files") == 1
    assert (tmp_path / "out" / "data_batch_1").read_bytes() == b"old"


@needs_mpi
def test_make_batches_from_annotated_recordings_with_two_ranks_writes_the_files_of_one(tmp_path):
    from tests.annotation_fixtures import write_raven, write_recording
    from tests.test_make_batches_annotations import FEATURES

    rec, tables = tmp_path / "rec", tmp_path / "tables"
    for i, calls in enumerate(([(2.5, 3.5, 200.0), (7.2, 7.6, 600.0)], [(1.0, 2.0, 200.0)], [], [(5.0, 6.0, 600.0)])):
        write_recording(str(rec / f"r{i}.flac"), 12.0, calls=calls, seed=i + 1)
        write_raven(str(tables / f"r{i}.Table.1.selections.txt"),
                    [(b, e, "upcall" if f < 400 else "gunshot", 0, 1000) for b, e, f in calls])
    (rec / "r9.flac").write_text("not audio at all\n" * 50)            # skipped.txt on both sides
    write_raven(str(tables / "r9.Table.1.selections.txt"), [(1.0, 2.0, "upcall", 0, 1)])
    (tmp_path / "features.yaml").write_text(FEATURES)
    args = ["--annotations", str(tables), "--features", str(tmp_path / "features.yaml"), "--window-hop", "1",
            "--jobs", "1", "--batch-size", "8", "--test-fraction", "0.25", "--quiet"]
    one = convnet(["make-batches", str(rec), str(tmp_path / "one"), *args])
    assert one.returncode == 0, one.stderr
    two = convnet(["make-batches", str(rec), str(tmp_path / "two"), *args], ranks=2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("make-batches") == 1
    names = sorted(os.listdir(tmp_path / "one"))
    assert names == sorted(os.listdir(tmp_path / "two")) and "data_batch_3" in names
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def _done_records(out):
    with open(out / "done.jsonl", encoding="utf-8") as f:
        return sorted((json.loads(line) for line in f), key=lambda r: r["path"])


@needs_mpi
def test_detect_with_two_ranks_writes_what_one_writes_and_resumes_under_any_k(tmp_path):
    from tests.detect_fixtures import tone_checkpoint, write_recording

    ck = tone_checkpoint(tmp_path / "best.npz")
    rec = tmp_path / "rec"
    (rec / "site1").mkdir(parents=True)
    write_recording(rec / "site1" / "a.wav", 30, [(10.0, 12.0), (20.0, 21.5)])
    write_recording(rec / "b.flac", 20, [(5.0, 7.0)], sr=1000, seed=3)
    write_recording(rec / "c.wav", 12, [(1.0, 3.0)], seed=4)
    write_recording(rec / "d.wav", 8, [], seed=5)
    (rec / "e.wav").write_bytes(b"RIFF not audio")                       # skipped.txt on both sides
    args = ["-f", str(ck), str(rec), "--quiet", "--combined", "--scores"]
    one = convnet(["detect", *args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = convnet(["detect", *args, "--out", str(tmp_path / "two")], ranks=2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("recording(s)") == 1 and two.stderr.count("skipped e.wav") == 1
    names = sorted(os.listdir(tmp_path / "one"))
    assert names == sorted(os.listdir(tmp_path / "two"))               # no per-process journal left
    for name in names:
        if name in ("done.jsonl", ".scores"):
            continue
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert _done_records(tmp_path / "one") == _done_records(tmp_path / "two")
    # a new recording: a 1-process resume of the 2-rank output does only it, and a 2-rank one nothing
    write_recording(rec / "f.wav", 6, [(2.0, 4.0)], seed=6)
    r1 = convnet(["detect", *args, "--out", str(tmp_path / "two"), "--resume"])
    assert r1.returncode == 0, r1.stderr
    assert "1 recording(s)" in r1.stdout and "4 already done" in r1.stdout
    r2 = convnet(["detect", *args, "--out", str(tmp_path / "two"), "--resume"], ranks=2)
    assert r2.returncode == 0, r2.stderr
    assert "0 recording(s)" in r2.stdout and "5 already done" in r2.stdout


@needs_mpi
def test_ctrl_c_to_a_two_rank_detect_leaves_one_journal_and_complete_tables(tmp_path):
    from tests.detect_fixtures import many_recordings, tone_checkpoint

    ck = tone_checkpoint(tmp_path / "best.npz")
    rec = many_recordings(tmp_path / "rec")
    out = tmp_path / "out"
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "convnet_cli", "detect", "-f", str(ck),
                             str(rec), "--out", str(out), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT, start_new_session=True)
    try:
        deadline = time.time() + 60
        part = out / "done.1.jsonl"
        while time.time() < deadline and proc.poll() is None and not (
                part.exists() and part.read_text().count("\n") >= 1):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)       # mpiexec passes it to both ranks
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    names = [json.loads(line)["table"] for line in (out / "done.jsonl").read_text().splitlines()]
    if proc.returncode == 130:
        assert err.count("interrupted:") == 1 and 1 <= len(names) < 40
    else:  # it finished before the signal arrived
        assert proc.returncode == 0 and len(names) == 40
    assert not [n for n in os.listdir(out) if n.startswith("done.") and n != "done.jsonl"]  # journals merged
    assert sorted(n for n in os.listdir(out) if n.endswith(".selections.txt")) == sorted(names)
    assert (out / "detections.csv").read_text().count("\n") == len(names) + 1
    resumed = convnet(["detect", "-f", str(ck), str(rec), "--out", str(out), "--quiet", "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "done.jsonl").read_text().count("\n") == 40


@needs_mpi
def test_best_by_auc_under_two_ranks_ranks_every_test_case(tmp_path):
    """The test ROC AUC needs every case's score: each rank scores its shares, the AUC is over all of them
    (the value of one process), and best.npz follows it."""
    write_batches(tmp_path / "batches", classes=2, seed=3)
    (tmp_path / "layers.yaml").write_text(LAYERS.replace("outputs: 3", "outputs: 2"))
    (tmp_path / "params.yaml").write_text(PARAMS)
    args = ["train", "--data-path", str(tmp_path / "batches"), "--layer-def", str(tmp_path / "layers.yaml"),
            "--layer-params", str(tmp_path / "params.yaml"), "--mini", "3", "--seed", "5", "--epochs", "2",
            "--best-by", "auc", "--quiet"]
    one = convnet(args + ["--save-path", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = convnet(args + ["--save-path", str(tmp_path / "two")], ranks=2)
    assert two.returncode == 0, two.stderr + two.stdout
    aucs = [[r["auc"] for r in map(json.loads, open(os.path.join(only_run(tmp_path / s), "train_log.jsonl")))
             if r["type"] == "test"] for s in ("one", "two")]
    assert len(aucs[0]) == 2 and all(a is not None for a in aucs[0])
    assert aucs[1] == pytest.approx(aucs[0], abs=1e-6)


# -- every fused relu path, with and without dropout, split over ranks (issue 23, item 1) -----------------------
# On the CPU a relu can be applied by the layer before it, chunk by chunk (Layer.fuses_neuron: conv, batchnorm,
# pool); the net then takes that layer's output as the relu's cache. Each path, with dropout after the pool
# and without, split over 2 ranks: the weights and costs of one process, to float32 rounding.
FUSED_PATHS = {
    "conv relu": ("conv1:  {type: conv, inputs: data, filters: 6, filterSize: 3, padding: 1, init: kaiming_normal, "
                  "neuron: relu}\nbn1:    {type: batchnorm, inputs: conv1}\n"
                  "pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 3, stride: 2}\n"),
    "batchnorm relu": ("conv1:  {type: conv, inputs: data, filters: 6, filterSize: 3, padding: 1, init: kaiming_normal}\n"
                       "bn1:    {type: batchnorm, inputs: conv1, neuron: relu}\n"
                       "pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 3, stride: 2}\n"),
    "pool relu": ("conv1:  {type: conv, inputs: data, filters: 6, filterSize: 3, padding: 1, init: kaiming_normal}\n"
                  "bn1:    {type: batchnorm, inputs: conv1}\n"
                  "pool1:  {type: pool, inputs: bn1, pool: max, sizeX: 3, stride: 2, neuron: relu}\n"),
}
SGD = "DEFAULT: {updater: sgd, epsW: 0.001, epsB: 0.001}\n"


def fused_net(path: str, dropout: bool) -> str:
    top = "pool1"
    tail = ""
    if dropout:
        tail, top = "drop:   {type: dropout, inputs: pool1}\n", "drop"
    return ("data:   {type: data, dataIdx: 0}\nlabels: {type: data, dataIdx: 1}\n" + FUSED_PATHS[path] + tail
            + f"fc2:    {{type: fc, inputs: {top}, outputs: 3, init: glorot_uniform}}\n"
            "probs:  {type: softmax, inputs: fc2}\nlogprob: {type: cost.logreg, inputs: [labels, probs]}\n")


def _sgd_steps(text, params, batches, world=None):
    """8 SGD steps of DataParallel (as trainer.py takes them) in world `world` (None: one process)."""
    from convnet_cli.backend import CPU
    from convnet_cli.data.provider import Minibatch
    from convnet_cli.net import Net
    from convnet_cli.parallel import SingleWorld
    from convnet_cli.train.data_parallel import DataParallel

    net = Net.from_text(text, params, (1, 12, 20), CPU, seed=3)
    dp = DataParallel(world or SingleWorld(), net)
    intr = type("I", (), {"requested": False})()
    costs = []
    for step, (x, y) in enumerate(batches):
        xs, ys, rng = dp.share(Minibatch(x, y, []), CPU.rng(100 + step))
        c = net.forward({0: xs, 1: ys}, train=True, rng=rng, allreduce=dp.allreduce)
        grads = net.backward(grad_scale=dp.grad_scale)
        costs.append(dp.combine(grads, c, x.shape[0], intr)["logprob"][0])
        net.update(grads)
    return net.get_arrays(), costs


@pytest.mark.parametrize("dropout", [False, True], ids=["no dropout", "dropout"])
@pytest.mark.parametrize("path", list(FUSED_PATHS))
def test_every_fused_relu_path_split_over_ranks_matches_one_process(path, dropout):
    from tests.parallel_fakes import run_worlds

    text = fused_net(path, dropout)
    params = SGD + ("drop: {keep: 0.7}\n" if dropout else "")
    rng = np.random.default_rng(0)
    batches = [(rng.normal(0.5, 1.0, (32, 12, 20, 1)).astype(np.float32), rng.integers(0, 3, 32).astype(np.int32))
               for _ in range(8)]
    one, costs = _sgd_steps(text, params, batches)
    two = run_worlds(2, lambda w: _sgd_steps(text, params, batches, w))
    assert [e for _, e in two] == [None, None]
    (a0, c0), (a1, _) = (r for r, _ in two)
    for k, v in one.items():
        scale = float(np.abs(v).max()) or 1.0
        # conv1's biases feed a batchnorm: their gradient is 0 up to rounding, so compare them absolutely
        np.testing.assert_allclose(a0[k], v, rtol=0, atol=1e-4 * scale if "biases" not in k else 1e-6, err_msg=k)
        np.testing.assert_array_equal(a0[k], a1[k], err_msg=k)   # the ranks agree exactly
    np.testing.assert_allclose(c0, costs, rtol=1e-4)


def _float64_gradients(text, params, x, y, world=None):
    """The summed gradients of one step of DataParallel with the net's arrays in float64."""
    from convnet_cli.backend import CPU
    from convnet_cli.data.provider import Minibatch
    from convnet_cli.net import Net
    from convnet_cli.parallel import SingleWorld
    from convnet_cli.train.data_parallel import DataParallel

    net = Net.from_text(text, params, (1, 12, 20), CPU, seed=3)
    for ps in net.params.values():
        for k in ps:
            ps[k] = ps[k].astype(np.float64)
    dp = DataParallel(world or SingleWorld(), net)
    xs, ys, rng = dp.share(Minibatch(x, y, []), CPU.rng(100))
    costs = net.forward({0: xs, 1: ys}, train=True, rng=rng, allreduce=dp.allreduce)
    grads = net.backward(grad_scale=dp.grad_scale)
    dp.combine(grads, costs, x.shape[0], type("I", (), {"requested": False})())
    return {f"{l}/{k}": np.array(v) for l, g in grads.items() for k, v in g.items()}


@pytest.mark.parametrize("dropout", [False, True], ids=["no dropout", "dropout"])
@pytest.mark.parametrize("path", list(FUSED_PATHS))
def test_split_gradients_equal_one_process_in_float64(path, dropout):
    """In float64 the gradient two ranks sum is one process's to 1e-12 on every fused relu path: the float32
    differences of a split run (a few 1e-4 of a layer's largest gradient after batchnorm, whose backward
    subtracts sums that nearly cancel) are rounding, not a different computation."""
    from tests.parallel_fakes import run_worlds

    text = fused_net(path, dropout)
    params = SGD + ("drop: {keep: 0.7}\n" if dropout else "")
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.5, 1.0, (32, 12, 20, 1)), rng.integers(0, 3, 32).astype(np.int32)
    one = _float64_gradients(text, params, x, y)
    two = run_worlds(2, lambda w: _float64_gradients(text, params, x, y, w))
    assert [e for _, e in two] == [None, None]
    for k, v in one.items():
        np.testing.assert_allclose(two[0][0][k], v, rtol=0, atol=1e-12 * max(float(np.abs(v).max()), 1.0),
                                   err_msg=k)


def _float64_adam_steps(text, params, batches, world=None):
    """8 adam steps of DataParallel with the net's arrays (and so its updater state) in float64."""
    from convnet_cli.backend import CPU
    from convnet_cli.data.provider import Minibatch
    from convnet_cli.net import Net
    from convnet_cli.parallel import SingleWorld
    from convnet_cli.train.data_parallel import DataParallel

    net = Net.from_text(text, params, (1, 12, 20), CPU, seed=3)
    for ps in net.params.values():
        for k in ps:
            ps[k] = ps[k].astype(np.float64)
    dp = DataParallel(world or SingleWorld(), net)
    intr = type("I", (), {"requested": False})()
    for step, (x, y) in enumerate(batches):
        xs, ys, rng = dp.share(Minibatch(x, y, []), CPU.rng(100 + step))
        c = net.forward({0: xs, 1: ys}, train=True, rng=rng, allreduce=dp.allreduce)
        grads = net.backward(grad_scale=dp.grad_scale)
        dp.combine(grads, c, x.shape[0], intr)
        net.update(grads)
    return {f"{l}/{k}": np.array(v) for l, ps in net.params.items() for k, v in ps.items()}


@pytest.mark.parametrize("dropout", [False, True], ids=["no dropout", "dropout"])
def test_adam_over_two_ranks_equals_one_process_in_float64(dropout):
    """Adam divides each gradient by its own running size, so in float32 a weight whose gradient is near 0
    takes a full step of either sign on rounding alone (up to 2% of conv1's largest weight after a few steps
    of a starter net, with or without dropout). In float64, 8 steps on 2 ranks give one process's weights to
    1e-9 of each array's largest value: the same computation. (The conv's biases, which feed a batchnorm,
    have a gradient of 0 up to rounding and are left out: adam turns that rounding into steps.)"""
    from tests.parallel_fakes import run_worlds

    text = fused_net("batchnorm relu", dropout)
    params = "DEFAULT: {updater: adam, epsW: 0.001, epsB: 0.001}\n" + ("drop: {keep: 0.7}\n" if dropout else "")
    rng = np.random.default_rng(0)
    batches = [(rng.normal(0.5, 1.0, (32, 12, 20, 1)), rng.integers(0, 3, 32).astype(np.int32)) for _ in range(8)]
    one = _float64_adam_steps(text, params, batches)
    two = run_worlds(2, lambda w: _float64_adam_steps(text, params, batches, w))
    assert [e for _, e in two] == [None, None]
    for k, v in one.items():
        if k == "conv1/biases":
            continue
        np.testing.assert_allclose(two[0][0][k], v, rtol=0, atol=1e-9 * max(float(np.abs(v).max()), 1.0), err_msg=k)


@needs_mpi
def test_two_ranks_reach_one_process_with_a_batchnorm_relu_before_pool_and_dropout(tmp_path):
    """The net of most starter configs (a conv without neuron, batchnorm with neuron: relu, max pooling,
    dropout), SGD, 8 steps of 32 cases: 2 ranks give one process's costs and weights."""
    two_ranks_against_one(tmp_path, dropout=True)


def two_ranks_against_one(tmp_path, dropout: bool, *extra, timeout=120):
    """`convnet train` of the starter net (batchnorm relu, max pool, dropout or not), SGD, 8 steps of 32, in one
    process and under `mpiexec -n 2`: the same costs (1e-4) and weights (1e-4 of each array's largest). The
    2-rank run's CompletedProcess. Also tests/gpu (extra: --device gpu)."""
    write_batches(tmp_path / "batches", n_batches=5, per_batch=64, shape=(1, 12, 20))
    (tmp_path / "layers.yaml").write_text(fused_net("batchnorm relu", dropout))
    (tmp_path / "params.yaml").write_text(SGD + ("drop: {keep: 0.7}\n" if dropout else ""))

    def args(save):
        a = train_args(tmp_path, tmp_path / save, "--epochs", "1", "--quiet", *extra)
        a[a.index("--mini") + 1] = "32"
        return a

    one = convnet(args("one"), timeout=timeout)
    assert one.returncode == 0, one.stderr
    two = convnet(args("two"), ranks=2, timeout=timeout)
    assert two.returncode == 0, two.stderr + two.stdout
    run1, run2 = only_run(tmp_path / "one"), only_run(tmp_path / "two")
    log1, log2 = ([r["cost"] for r in map(json.loads, open(os.path.join(run, "train_log.jsonl")))
                   if r["type"] in ("train", "test")] for run in (run1, run2))
    assert log2 == pytest.approx(log1, rel=1e-4)
    a, b = weights(run1, 1), weights(run2, 1)
    for k in a:   # conv1's biases feed the batchnorm: a gradient of 0 up to rounding, compared absolutely
        atol = 1e-6 if k.startswith("conv1/biases") else 1e-4 * (float(np.abs(a[k]).max()) or 1.0)
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=atol, err_msg=k)
    return two


# -- ranks that see different batch folders (issue 23) -------------------------------------------------------
@pytest.mark.parametrize("change,named", [
    (dict(n_batches=4), "batch files"),                 # different counts: hung in a collective
    (dict(seed=1), "normalisation"),                    # same counts, other data
    (dict(classes=2), "label names"),
])
def test_ranks_seeing_different_batch_folders_stop_with_one_line(tmp_path, change, named):
    from convnet_cli.data.batch_files import BatchSet
    from convnet_cli.errors import DataError
    from convnet_cli.train.data_parallel import check_same_batches
    from tests.parallel_fakes import run_worlds

    write_batches(tmp_path / "a")
    write_batches(tmp_path / "b", **change)
    write_batches(tmp_path / "copy")                     # the same data elsewhere is fine
    out = run_worlds(2, lambda w: check_same_batches(w, BatchSet(tmp_path / ("a" if w.rank == 0 else "copy"))))
    assert [e for _, e in out] == [None, None]
    out = run_worlds(2, lambda w: check_same_batches(w, BatchSet(tmp_path / ("a" if w.rank == 0 else "b"))))
    errors = [e for _, e in out]
    assert all(isinstance(e, DataError) for e in errors), errors
    msg = str(errors[0])
    assert str(errors[1]) == msg and "\n" not in msg
    assert named in msg and "rank 1" in msg and "same batch folder" in msg


@needs_mpi
def test_two_ranks_with_different_batch_folders_stop_instead_of_hanging(ws, tmp_path):
    """mpiexec's MPMD form gives the ranks different --data-path: a one-line error, exit 2, no run."""
    write_batches(tmp_path / "other", n_batches=4)
    a = train_args(ws, tmp_path / "runs", "--epochs", "1", "--quiet")
    b = list(a)
    b[b.index("--data-path") + 1] = str(tmp_path / "other")
    cmd = [MPIEXEC, "-n", "1", sys.executable, "-m", "convnet_cli", *a, ":",
           "-n", "1", sys.executable, "-m", "convnet_cli", *b]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(), cwd=ROOT)
    assert r.returncode == 2, r.stderr + r.stdout
    assert r.stderr.count("convnet: error") == 1 and "batch files" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


def _annotated(tmp_path):
    from tests.annotation_fixtures import write_raven, write_recording

    rec, tables = tmp_path / "rec", tmp_path / "tables"
    for i, calls in enumerate(([(2.5, 3.5, 200.0), (7.2, 7.6, 600.0)], [(1.0, 2.0, 200.0)], [], [(5.0, 6.0, 600.0)])):
        write_recording(str(rec / f"r{i}.flac"), 12.0, calls=calls, seed=i + 1)
        write_raven(str(tables / f"r{i}.Table.1.selections.txt"),
                    [(b, e, "upcall" if f < 400 else "gunshot", 0, 1000) for b, e, f in calls])
    return rec, tables


def test_a_full_disk_on_one_rank_of_make_batches_reaches_rank_0_which_cleans_up(tmp_path, monkeypatch):
    """--annotations under 2 ranks: rank 1's spill file cannot be written (disk full). Every rank must end
    with that error, and rank 0 (which holds them) must remove the staging folder and the lock. Before, rank 1
    failed alone while rank 0 waited in a collective until MPI_Abort killed it, leaving both behind."""
    import errno
    import threading

    from convnet_cli.data.batch_set_swap import LOCK, STAGING_PREFIX
    from convnet_cli.errors import DataError
    from convnet_cli.ingest import recordings
    from convnet_cli.ingest.features import FeatureSpec
    from tests.parallel_fakes import run_worlds
    from tests.test_make_batches_annotations import FEATURES

    import yaml

    rec, tables = _annotated(tmp_path)
    spec = FeatureSpec.from_dict(yaml.safe_load(FEATURES), "features.yaml")
    real = recordings.iter_selected_window_features
    where = threading.local()

    def disk_full_on_rank_1(*a, **k):
        for item in real(*a, **k):
            if getattr(where, "rank", 0) == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield item

    monkeypatch.setattr(recordings, "iter_selected_window_features", disk_full_on_rank_1)
    out = tmp_path / "batches"

    def rank(w):
        where.rank = w.rank
        return recordings.make_batches_from_annotations(rec, out, str(tables), features=spec, window_hop=1.0,
                                                        jobs=1, batch_size=8, test_fraction=0.25, progress=False,
                                                        world=w)

    results = run_worlds(2, rank, timeout=20)
    errors = [e for _, e in results]
    assert all(isinstance(e, DataError) for e in errors), errors
    assert all("No space left" in str(e) for e in errors), errors
    left = os.listdir(out) if out.exists() else []
    assert not [n for n in left if n.startswith(STAGING_PREFIX) or n == LOCK], left


# -- multi-label targets (SPEC 17) ----------------------------------------------------------------------------
ML_LAYERS = LAYERS.replace("outputs: 3, init: glorot_uniform}", "outputs: 3, init: glorot_uniform, neuron: logistic}").replace(
    "probs:  {type: softmax, inputs: fc2}\nlogprob: {type: cost.logreg, inputs: [labels, probs]}\n",
    "bce:    {type: cost.bce, inputs: [labels, fc2], posWeight: [1, 2, 0.5]}\n")


def write_multilabel_batches(folder, n_batches=3, per_batch=10, shape=(1, 8, 8), classes=3, seed=0):
    """Gaussian cases whose mean moves with each class present; targets (classes, cases) 1 / 0 / 255 unknown."""
    write_batches(folder, n_batches, per_batch, shape, classes, seed)
    rng = np.random.default_rng(seed + 100)
    num_vis = int(np.prod(shape))
    for b in range(1, n_batches + 1):
        t = (rng.random((classes, per_batch)) < 0.4).astype(np.uint8)
        t[rng.random((classes, per_batch)) < 0.15] = 255
        rows = rng.normal(0, 1, (per_batch, num_vis)) + 3.0
        for c in range(classes):
            rows[:, c * 20:(c + 1) * 20] += 1.5 * (t[c] == 1)[:, None]
        primary = np.where((t == 1).any(axis=0), (t == 1).argmax(axis=0), -1)
        batch, _ = encode_batch(rows.T.astype(np.float32), primary, [f"b{b}c{k}" for k in range(per_batch)], "float32")
        batch["targets"] = t
        write_pickle_atomic(folder / f"data_batch_{b}", batch)
    from convnet_cli.data.batch_files import restricted_load

    meta = restricted_load(str(folder / "batches.meta"))
    meta["multi_label"] = True
    write_pickle_atomic(folder / "batches.meta", meta)


@needs_mpi
def test_two_ranks_reach_one_process_on_multi_label_targets(tmp_path):
    """cost.bce on masked multi-label targets, split over 2 ranks: the weights, costs and per-class test AP of
    one process (the test scores of both ranks' shares are gathered before the AP is taken)."""
    write_multilabel_batches(tmp_path / "batches", seed=4)
    (tmp_path / "layers.yaml").write_text(ML_LAYERS)
    (tmp_path / "params.yaml").write_text(PARAMS)
    args = ["train", "--data-path", str(tmp_path / "batches"), "--layer-def", str(tmp_path / "layers.yaml"),
            "--layer-params", str(tmp_path / "params.yaml"), "--mini", "3", "--seed", "5", "--epochs", "2",
            "--augment", "mixup", "--balance", "--quiet"]
    one = convnet(args + ["--save-path", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = convnet(args + ["--save-path", str(tmp_path / "two")], ranks=2)
    assert two.returncode == 0, two.stderr + two.stdout
    run1, run2 = only_run(tmp_path / "one"), only_run(tmp_path / "two")
    assert_same_weights(weights(run1, 2), weights(run2, 2))
    logs = [[r for r in map(json.loads, open(os.path.join(run, "train_log.jsonl"))) if r["type"] in ("train", "test")]
            for run in (run1, run2)]
    assert [(r["type"], r["cases"]) for r in logs[0]] == [(r["type"], r["cases"]) for r in logs[1]]
    for a, b in zip(*logs):
        assert a["cost"] == pytest.approx(b["cost"], rel=1e-4)
        assert a["error"] == pytest.approx(b["error"], abs=1e-6)
        if a["type"] == "test":
            assert a["map"] is not None and a["map"] == pytest.approx(b["map"], abs=1e-6)
            assert a["ap"].keys() == b["ap"].keys()
            for k in a["ap"]:
                assert a["ap"][k] == pytest.approx(b["ap"][k], abs=1e-6)
