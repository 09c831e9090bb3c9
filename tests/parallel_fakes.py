"""Stand-ins for K processes inside one test process: threads that sum through a barrier (the
ctx.allreduce a layer sees under MPI)."""
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
