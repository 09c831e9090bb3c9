"""Stand-ins for K processes inside one test process: threads that sum through a barrier (the
ctx.allreduce a layer sees under MPI), and a world of such threads (`ThreadWorld`: the collectives of
convnet_cli/parallel.py's MPIWorld) for code that takes a world."""
from __future__ import annotations

import threading


class ThreadSum:
    """K threads' allreduce: each passes its array, each gets the sum of all K (in rank order)."""

    def __init__(self, k: int):
        self.k = k
        self.barrier = threading.Barrier(k)
        self.slots = [None] * k

    def for_rank(self, rank: int):
        def allreduce(local):
            self.slots[rank] = local.copy()
            self.barrier.wait()
            total = self.slots[0].copy()
            for other in self.slots[1:]:
                total += other
            self.barrier.wait()
            return total

        return allreduce


def run_ranks(k: int, fn):
    """fn(rank, allreduce) in k threads; their results in rank order (an exception is raised again)."""
    ts = ThreadSum(k)
    results, errors = [None] * k, []

    def run(r):
        try:
            results[r] = fn(r, ts.for_rank(r))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
            ts.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


class ThreadWorld:
    """Rank `rank` of k threads, with parallel.py's collectives over a shared exchange. A collective that one
    thread never reaches times out (threading.BrokenBarrierError) instead of hanging the test."""

    def __init__(self, exchange, rank: int):
        self.x, self.rank, self.size = exchange, rank, exchange.k
        self.is_root = rank == 0
        self.local_rank, self.local_size = rank, exchange.k

    def _all(self, obj):
        self.x.slots[self.rank] = obj
        self.x.barrier.wait()
        got = list(self.x.slots)
        self.x.barrier.wait()
        return got

    def allgather(self, obj):
        return self._all(obj)

    def gather(self, obj, root=0):
        got = self._all(obj)
        return got if self.rank == root else None

    def bcast(self, obj, root=0):
        return self._all(obj)[root]

    def barrier(self):
        self._all(None)

    def allreduce(self, buf):
        total = sum(a.copy() for a in self._all(buf.copy()))
        buf[...] = total
        return buf

    def attach(self, backend):
        pass

    def abort(self, code=1):
        raise SystemExit(code)


def run_worlds(k: int, fn, timeout: float = 30):
    """fn(world) in k threads, each with its ThreadWorld; [(result or None, exception or None)] in rank order."""
    ex = ThreadSum(k)
    ex.barrier = threading.Barrier(k, timeout=timeout)
    out = [(None, None)] * k

    def run(r):
        try:
            out[r] = (fn(ThreadWorld(ex, r)), None)
        except BaseException as exc:  # noqa: BLE001 - returned to the caller
            out[r] = (None, exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout * 4)
    return out
