"""Using the CPU's cores from NumPy: one pool of threads for all the parallel work of a step.

NumPy's own loops use one core, and its BLAS (OpenBLAS in the numpy wheels) runs each GEMM on a team of
threads of its own. A conv layer does hundreds of GEMMs a step, one per chunk of cases that fits the cache,
each after an im2col that the calling thread builds. Measured on this project's 2-core machine (AMD EPYC in
a VM, 2026-11-30, quiet): with OpenBLAS on 2 threads the upcall step took 690 ms and with 1 thread 460 ms.
The columns written by the calling core had to travel to the other core for its half of every GEMM, and
OpenBLAS's idle threads spin (~0.1 s after each call) on the core that the element-wise threads want. So
when NumPy's BLAS can be told its thread count at run time (OpenBLAS, MKL, BLIS; found in the loaded
libraries), convnet sets it to 1 and spreads the work itself: each thread of this pool takes whole chunks
of cases (its own im2col and its own GEMM, in its own cache) and large single GEMMs are split by rows
(`matmul`). Where BLAS cannot be told (another BLAS, another OS), the chunks run one after the other and
BLAS keeps its threads, as before.

Results do not depend on the thread count: work is split into pieces fixed by the shapes alone (chunks,
blocks of chunks, row blocks), every output element is computed by one piece, and sums over pieces (weight
gradients) are taken in piece order by the calling thread.

The thread count is the first of OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS that is set to a
positive whole number (another value is ignored with one warning), else the cores this process may use
(under an MPI launcher, its share of the node's cores: `share_cores`).
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

# Sums over pieces (weight gradients) use at most this many blocks of chunks: fixed, so that the result does
# not depend on the thread count; threads beyond it find no block to take in those loops.
BLOCKS = 16
# A single GEMM below this many FLOPs is not worth splitting over threads.
SPLIT_FLOPS = 16e6

_POOL = None
_POOL_PID = None
_POOL_LOCK = threading.Lock()
_BLAS_ONE = {}  # pid -> True when this process's BLAS was set to one thread, False when it cannot be


_NODE_PROCESSES = [1]  # processes of this MPI job on this node (parallel.share_node_cores), sharing its cores


def share_cores(processes_on_node: int):
    """Tell the pool that this many processes of one job run on this node: unless a thread count is set,
    each takes its share of the cores (a launcher that binds each process to its own cores already gave
    each process only those, and then nothing is divided)."""
    _NODE_PROCESSES[0] = max(1, int(processes_on_node))


_WARNED = set()  # thread variables whose value was warned about (once per process)


def _thread_setting(var: str) -> int | None:
    """The thread count an environment variable sets, or None when unset. A value that is not a positive
    whole number in ASCII digits (OpenMP's list form '4,2': its first) is ignored with one warning:
    '²' passes str.isdigit but not int()."""
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    v = raw.strip().split(",")[0].strip()
    if v.isascii() and v.isdigit() and int(v) > 0:
        return int(v)
    if var not in _WARNED:
        _WARNED.add(var)
        sys.stderr.write(f"convnet: warning: {var}={raw!r} is not a whole number of threads; ignored (set it to a "
                         f"number such as {max(1, len(_usable_cores()))}, or unset it)\n")
    return None


def _usable_cores():
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)


def compute_threads() -> int:
    """Threads for parallel work: the thread setting if one is given, else the usable cores (this
    process's share of them when several processes of an MPI job share the node)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        n = _thread_setting(var)
        if n is not None:
            return n
    if not hasattr(os, "sched_getaffinity"):
        return max(1, (os.cpu_count() or 1) // _NODE_PROCESSES[0])
    usable = len(os.sched_getaffinity(0))
    if usable < (os.cpu_count() or usable):  # bound to some cores by the launcher: they are this process's
        return usable
    return max(1, usable // _NODE_PROCESSES[0])


def _blas_libraries():
    """Paths of the BLAS libraries loaded in this process (Linux: from /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    keys = ("openblas", "libmkl_rt", "libblis")
    return sorted(p for p in paths if any(k in os.path.basename(p).lower() for k in keys))


_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads", "MKL_Set_Num_Threads", "bli_thread_set_num_threads")


def _set_blas_one_thread() -> bool:
    import numpy  # noqa: F401  (loads numpy's BLAS, so that it is among the mapped libraries)

    done = False
    for path in _blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                fn(1)
                done = True
                break
    return done


def parallel_threads(xp, work_items: int) -> int:
    """Threads to spread `work_items` pieces of GEMM work over (1: run them in order on this thread).

    More than 1 only on NumPy, with more than one thread configured, outside this pool's own threads, and
    where BLAS was set to one thread (done here, once per process, the first time it is asked)."""
    if xp.__name__ != "numpy" or work_items <= 1:
        return 1
    threads = compute_threads()
    if threads <= 1 or threading.current_thread().name.startswith("convnet-pool"):
        return 1
    pid = os.getpid()
    if pid not in _BLAS_ONE:
        with _POOL_LOCK:
            if pid not in _BLAS_ONE:
                _BLAS_ONE[pid] = _set_blas_one_thread()
    return min(threads, work_items) if _BLAS_ONE[pid] else 1


def elementwise_threads(xp, work_items: int) -> int:
    """Threads for element-wise work (no BLAS inside): all configured ones on NumPy."""
    if xp.__name__ != "numpy" or work_items <= 1:
        return 1
    if threading.current_thread().name.startswith("convnet-pool"):
        return 1
    return max(1, min(compute_threads(), work_items))


def _executor(workers):
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid() or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convnet-pool")
            _POOL_PID = os.getpid()
        return _POOL


def background_executor():
    """The pool, for work that runs beside the calling thread's own (a recurrent layer's weight
    gradients beside its step loop); the caller waits on the futures it submits."""
    return _executor(max(1, compute_threads() - 1))


def _run_share(fn, worker, items, results, first):
    for i, item in enumerate(items):
        results[first + i] = fn(worker, item)


def parallel_map(fn, items, threads: int) -> list:
    """[fn(worker, item) for item in items], the items cut into `threads` contiguous shares; share k runs
    on worker k (0: the calling thread, which works instead of waiting), so per-worker scratch buffers
    indexed by `worker` are never used by two items at once. The results come back in item order.
    The items must write disjoint parts of any shared output."""
    items = list(items)
    results = [None] * len(items)
    threads = max(1, min(threads, len(items)))
    if threads == 1:
        _run_share(fn, 0, items, results, 0)
        return results
    cuts = [len(items) * k // threads for k in range(threads + 1)]
    pool = _executor(threads - 1)
    futures = [pool.submit(_run_share, fn, k, items[cuts[k]:cuts[k + 1]], results, cuts[k])
               for k in range(1, threads)]
    errors = []
    try:
        _run_share(fn, 0, items[:cuts[1]], results, 0)
    except BaseException as exc:  # noqa: BLE001  (re-raised below, after the workers are done)
        errors.append(exc)
    finally:  # never return (or raise) while a worker may still write into the outputs
        for f in futures:
            while True:
                try:
                    f.result()
                    break
                except BaseException as exc:  # noqa: BLE001  (the worker's error, or Ctrl-C while waiting)
                    errors.append(exc)
                    if f.done():
                        break
    if errors:
        raise errors[0]
    return results


def blocks(bounds: list) -> list:
    """The chunk bounds cut into at most BLOCKS contiguous blocks (a split fixed by the shapes alone)."""
    nb = min(BLOCKS, len(bounds))
    cuts = [len(bounds) * k // nb for k in range(nb + 1)]
    return [bounds[cuts[k]:cuts[k + 1]] for k in range(nb)]


def chunk_bounds(n: int, per_chunk: int) -> list:
    return [(n0, min(n, n0 + per_chunk)) for n0 in range(0, n, per_chunk)]


def ordered_sum(parts):
    """Sum of the arrays in `parts` (None entries skipped), added in order into the first one."""
    total = None
    for p in parts:
        if p is None:
            continue
        if total is None:
            total = p
        else:
            total += p
    return total


def matmul(a, b, out=None):
    """a @ b for 2-D arrays; a large GEMM (NumPy) is cut into pieces, by rows of a, or by columns of b when
    a has few rows, and the pieces are spread over the threads (BLAS on one thread). The cut depends on
    the shapes alone, never on the thread count: BLAS rounds a row differently in GEMMs of different
    sizes, so a cut by thread count would change the bits with it."""
    import numpy as np

    if not isinstance(a, np.ndarray):  # CuPy: one cuBLAS call
        from convnet_cli.backend import get_array_module

        return get_array_module(a).matmul(a, b, out=out)
    m, n = a.shape[0], b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    by_rows = m >= n or m >= 256
    size = m if by_rows else n
    pieces = max(1, min(BLOCKS, size // 64)) if 2.0 * m * a.shape[1] * n >= SPLIT_FLOPS else 1
    if pieces == 1:
        np.matmul(a, b, out=out)
        return out
    cuts = [size * k // pieces for k in range(pieces + 1)]

    def piece(worker, k):
        s = slice(cuts[k], cuts[k + 1])
        if by_rows:
            np.matmul(a[s], b, out=out[s])
        else:
            out[:, s] = a @ b[:, s]

    parallel_map(piece, range(pieces), parallel_threads(np, pieces))
    return out
