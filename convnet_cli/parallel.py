"""More than one process: the MPI world a command runs in, and the sums between its processes.

`get_world()` is what commands call. Started by `mpiexec -n K` / `srun` with K > 1 (seen in the environment
the launcher sets, below), it imports mpi4py and returns an `MPIWorld`; otherwise a `SingleWorld` whose
methods do nothing, and mpi4py is never imported, so a plain `convnet train` behaves exactly as without MPI.

A world has `rank`, `size`, `local_rank` (the rank among the processes of this node: it picks the GPU),
`allreduce(buf)` (sum a flat float array over the processes, in place), `bcast`, `gather`, `barrier`,
`abort`. Host arrays are summed with MPI Allreduce. After `attach(backend)` with a GPU backend, device
arrays are summed with NCCL through CuPy: rank 0 makes a NCCL unique id, MPI broadcasts it, and every rank
opens its communicator with it (the design ChainerMN used). Ranks that share a GPU sum through host memory
(NCCL takes one process per device). A one-rank communicator and the shared-GPU path have run on a GPU;
NCCL between two GPUs has not (the id broadcast, buffer dtype and stream arguments are tested on the CPU
with stand-ins).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

import numpy as np

from convnet_cli.errors import ConfigError

# (size variable, rank variable, local rank variable, launcher), first match wins. SLURM's variables count
# only inside a job step started by srun (SLURM_STEP_NUM_TASKS); an sbatch script itself is one process
# even when the job has many tasks.
LAUNCHERS = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "Open MPI mpiexec"),
    ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "MPICH/Intel MPI mpiexec"),
    ("PMIX_SIZE", "PMIX_RANK", "PMIX_LOCAL_RANK", "PMIx launcher"),
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "MVAPICH mpiexec"),
    ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID", "srun"),
)
DISABLE = "CONVNET_MPI"   # CONVNET_MPI=0: run as one process even under a launcher


def _int(value):
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def launch_from_env(environ=None):
    """(size, rank, local_rank, launcher) of a launch with more than one process, from the environment
    variables the launchers set; None for a single process. local_rank is None when not given."""
    env = os.environ if environ is None else environ
    if str(env.get(DISABLE, "")).strip().lower() in ("0", "no", "off", "false"):
        return None
    for size_var, rank_var, local_var, launcher in LAUNCHERS:
        size = _int(env.get(size_var))
        if size is None:
            continue
        rank = _int(env.get(rank_var))
        if size > 1 and rank is not None:
            return size, rank, _int(env.get(local_var)), launcher
        return None  # the launcher said one process (or gave no rank): nothing parallel
    return None


class SingleWorld:
    """One process: every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    is_root = True
    nccl = None

    def allreduce(self, buf):
        return buf

    def bcast(self, obj, root=0):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code=1):
        raise SystemExit(code)

    def attach(self, backend):
        pass

    def describe(self) -> str:
        return "1 process"


class MPIWorld:
    """K processes under MPI. comm: an mpi4py communicator (COMM_WORLD); MPI: the mpi4py.MPI module."""

    def __init__(self, comm, MPI, launcher: str = "mpiexec"):
        self.comm = comm
        self.MPI = MPI
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.is_root = self.rank == 0
        self.launcher = launcher
        # the rank among the processes sharing this node's memory: what picks a GPU
        try:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        except Exception:  # an MPI without MPI-3 shared communicators
            self.local_rank, self.local_size = self.rank, self.size
        self.nccl = None

    # -- host objects -------------------------------------------------------------------------------
    def bcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def gather(self, obj, root=0):
        return self.comm.gather(obj, root=root)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        self.comm.Abort(int(code))

    # -- sums -----------------------------------------------------------------------------------------
    def allreduce(self, buf):
        """Sum the flat float32/float64 array `buf` over all processes, in place; returns it. A CuPy array
        goes through NCCL when `attach` opened a communicator, else through host memory and MPI."""
        if isinstance(buf, np.ndarray):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            return buf
        if self.nccl is not None:
            return self.nccl.allreduce(buf)
        host = buf.get()
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        buf.set(host)
        return buf

    def attach(self, backend):
        """Open the NCCL communicator for a GPU backend (one device per process); nothing for the CPU."""
        if not getattr(backend, "is_gpu", False) or self.nccl is not None:
            return
        try:
            from cupy.cuda import nccl
            available = getattr(nccl, "available", True)
        except ImportError as exc:
            available, nccl = False, exc
        # every rank decides alike (same install), so either all open the communicator or none does
        if not all(self.allgather(bool(available))):
            if self.is_root:
                sys.stderr.write("convnet: NCCL is not available to CuPy here; device sums go through host "
                                 "memory and MPI (slower: install a CuPy build with NCCL)\n")
            return
        # NCCL takes one process per GPU and fails on two ranks of one device (more processes than GPUs on a
        # node): then every rank sums through host memory, as all of them must agree
        places = self.allgather(device_place(backend))
        if len(set(places)) < len(places):
            if self.is_root:
                shared = sorted({p for p in places if places.count(p) > 1})
                host, gpu = shared[0]
                sys.stderr.write(f"convnet: {places.count(shared[0])} processes share the GPU {gpu} on {host}; "
                                 f"device sums go through host memory and MPI (start one process per GPU, or "
                                 f"set CUDA_VISIBLE_DEVICES per process, for NCCL)\n")
            return
        self.nccl = NcclSum.create(self, nccl, backend.xp, backend.device_id or 0)

    def describe(self) -> str:
        return f"{self.size} processes ({self.launcher})"


def device_place(backend) -> tuple:
    """(host name, the GPU's PCI bus id) of a GPU backend: two processes with the same place share a device
    (CUDA_VISIBLE_DEVICES renumbers devices, the bus id does not). The device number stands in for the bus
    id where CuPy cannot give it."""
    import socket

    device_id = backend.device_id or 0
    try:
        gpu = str(backend.xp.cuda.Device(device_id).pci_bus_id)
    except Exception:
        gpu = f"gpu:{device_id}"
    return socket.gethostname(), gpu


class NcclSum:
    """In-place sums of device buffers over the world with NCCL. `nccl` is cupy.cuda.nccl and `cupy` the
    CuPy module (tests pass stand-ins)."""

    DTYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}

    def __init__(self, comm, nccl, cupy):
        self.comm, self.nccl, self.cupy = comm, nccl, cupy

    @classmethod
    def create(cls, world, nccl, cupy, device_id: int):
        """Rank 0 makes the unique id, MPI broadcasts it, every rank joins with it on its own device."""
        uid = nccl.get_unique_id() if world.rank == 0 else None
        uid = world.bcast(uid, root=0)
        with cupy.cuda.Device(device_id):
            comm = nccl.NcclCommunicator(world.size, uid, world.rank)
        return cls(comm, nccl, cupy)

    def allreduce(self, buf):
        name = str(buf.dtype)
        if name not in self.DTYPES:
            raise TypeError(f"NCCL sum of a {name} buffer: only float32 and float64 are summed")
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, getattr(self.nccl, self.DTYPES[name]),
                            self.nccl.NCCL_SUM, stream.ptr)
        return buf


_WORLD = []


def share_node_cores(world) -> None:
    """Tell the CPU thread pool (layers/cpu_threads.py) how many processes of this job run on this node, so
    that their compute threads share its cores (unless a thread count is set). Called by the commands that
    run under MPI (train, make-batches, detect) once they have their world."""
    from convnet_cli.layers.cpu_threads import share_cores

    share_cores(getattr(world, "local_size", 1))


def get_world():
    """The world of this process (made once): MPIWorld under a launcher with K > 1, else SingleWorld."""
    if _WORLD:
        return _WORLD[0]
    launch = launch_from_env()
    if launch is None:
        world = SingleWorld()
    else:
        size, rank, _, launcher = launch
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ConfigError(
                f"started by {launcher} as process {rank} of {size}, but mpi4py cannot be imported ({exc}); "
                "install it with: pip install 'convnet[mpi]' (or set CONVNET_MPI=0 to run single processes)"
            ) from None
        world = MPIWorld(MPI.COMM_WORLD, MPI, launcher)
        if world.size != size:
            raise ConfigError(
                f"{launcher} started {size} processes but mpi4py's MPI sees {world.size}: mpi4py was built "
                "for another MPI than the launcher on PATH; use the mpiexec of the MPI mpi4py was built with")
    _WORLD.append(world)
    return world


def on_root(world, fn):
    """fn() on rank 0, its result broadcast to every rank; an exception it raises is raised on every rank
    (so a check that fails stops all processes alike). With one process: fn()."""
    if world.size == 1:
        return fn()
    outcome = None
    if world.is_root:
        try:
            outcome = (True, fn())
        except Exception as exc:  # noqa: BLE001 - sent to every rank, raised there
            outcome = (False, exc)
    ok, value = world.bcast(outcome)
    if not ok:
        raise value
    return value


def rank_device(device: str, world) -> str:
    """The --device of this process: under K > 1, `gpu` (and `auto` on a GPU machine) becomes gpu:N with N
    the local rank modulo the GPUs it sees (one GPU per process; with CUDA_VISIBLE_DEVICES set per task by
    the scheduler each process sees one, gpu:0). An explicit gpu:N is kept."""
    if world.size == 1:
        return device
    d = (device or "cpu").strip().lower()
    if d in ("gpu", "auto"):
        from convnet_cli.backend import gpu_count

        n = gpu_count()
        if n == 0:
            return "cpu" if d == "auto" else d
        return f"gpu:{world.local_rank % n}"
    return device


def shares(n: int, size: int) -> list:
    """The contiguous share [lo, hi) of n cases each of `size` processes computes, in rank order; their
    sizes differ by one at most."""
    return [(r * n // size, (r + 1) * n // size) for r in range(size)]


# How long a rank other than 0 that failed waits for rank 0 to report the same error (and abort the job)
# before it reports its own: user errors are usually the same on every rank, and one message is enough.
GRACE_SECONDS = 5.0
# How long a failed rank waits between writing its message and MPI_Abort (see collective_errors).
ABORT_OUTPUT_SECONDS = 0.5


@contextlib.contextmanager
def collective_errors(world=None):
    """Around a command's body under K > 1: an error on any rank ends every rank (MPI Abort with the
    command's exit code) instead of leaving the others waiting in a collective; rank 0 reports it, another
    rank only when rank 0 did not end the job first. A normal exit (0, or 130 after Ctrl-C, which all ranks
    reach together) passes. With one process: nothing."""
    world = world or get_world()
    if world.size == 1:
        yield
        return
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure must end the whole job
        code, message = _report(exc)
        if not world.is_root:
            try:
                time.sleep(GRACE_SECONDS)
            except KeyboardInterrupt:  # the launcher passing on a second Ctrl-C: report and end now
                pass
            message = message.replace("convnet: error:", f"convnet: error (rank {world.rank}):", 1)
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        # The launcher forwards each process's output through its own proxies, and MPI_Abort tears them down
        # at once: without a moment's wait the message was lost now and then (MPICH: 3 of some 25 runs of
        # tests/test_mpi.py lost one).
        time.sleep(ABORT_OUTPUT_SECONDS)
        world.abort(code)
        os._exit(code)  # MPI_Abort does not return; should it, this process must not carry on either


def _report(exc) -> tuple:
    """(exit code, one-line message) as convnet_cli.cli.main reports `exc` (a traceback for a bug)."""
    from convnet_cli.errors import ConvnetError

    debug = "--debug" in sys.argv
    if isinstance(exc, ConvnetError):
        text = f"convnet: error: {exc}"
        code = exc.exit_code
    elif isinstance(exc, KeyboardInterrupt):
        return 130, "convnet: interrupted"
    elif isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        text, code = f"convnet: error: {where}{exc.strerror or exc}", 1
    else:
        debug = True
        text, code = f"convnet: error: {type(exc).__name__}: {exc}", 1
    if debug:
        text = "".join(traceback.format_exception(exc)).rstrip() + "\n" + text
    return code, text
