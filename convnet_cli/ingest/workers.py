"""Worker processes for make-batches (clips and recordings): the one pool runner, results in order.

`ordered_map(fn, items, jobs)` yields (item, fn(*item args)) in the order of `items`, running up to `jobs`
at once in 'spawn' processes (safe beside threads and GPUs) with a few in flight per process, so memory stays
bounded and results are consumed as they come. Each worker gets one BLAS/OpenMP thread: the processes are
the parallelism. With one job everything runs in this process.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from contextlib import contextmanager

from convnet_cli.errors import DataError


def import_once(*modules) -> float:
    """Seconds spent importing those of `modules` not imported yet (a worker's first task pays them)."""
    import importlib

    t0 = time.perf_counter()
    for m in modules:
        if m not in sys.modules:
            importlib.import_module(m)
    return time.perf_counter() - t0


@contextmanager
def single_threaded_children():
    """Worker processes inherit these: one BLAS/OpenMP thread each, since the processes are the parallelism."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in names}
    for k in names:
        os.environ[k] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def mp_context(multiprocessing):
    """'spawn' (safe beside threads and GPUs); 'fork' only where spawn cannot re-import the main script
    (a program read from stdin, whose __main__.__file__ is '<stdin>')."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path is not None and not os.path.exists(path) \
            and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def ordered_map(fn, items, jobs: int, ahead: int = 3, died=None):
    """Yield (item, fn(*args(item))) for each of `items` in order; an item is a tuple (key, args).

    jobs > 1: in that many worker processes, at most `ahead` tasks per process in flight. fn must be a module
    level function (spawned workers import it). died(item) -> the one-line message of the DataError raised
    when a worker dies on that item (out of memory, a file that crashes the decoder)."""
    items = list(items)
    jobs = max(1, min(int(jobs), len(items)))
    if jobs == 1:
        for item in items:
            yield item, fn(*item[1])
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pending = deque()
    it = iter(items)
    with single_threaded_children():
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp_context(multiprocessing))
        try:
            def submit():
                item = next(it, None)
                if item is not None:
                    pending.append((item, pool.submit(fn, *item[1])))

            for _ in range(ahead * jobs):
                submit()
            while pending:
                item, fut = pending.popleft()
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    raise DataError(died(item) if died else "a worker process died (out of memory, or a file "
                                    "that crashes the decoder); run with --jobs 1 to see more") from None
                submit()
                yield item, res
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)
