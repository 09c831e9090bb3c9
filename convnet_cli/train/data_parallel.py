"""What the trainer does differently when K processes train one net (convnet_cli/parallel.py's world).

Every process holds the whole net and reads the same minibatches (same seeds, same shuffles, same
augmentations); each computes a contiguous share of every minibatch (`parallel.shares`). So that the K
processes reach the weights of one process:

- dropout draws the single-process mask of the whole minibatch and keeps its own rows (`SlicedRandom`);
- the cost gradient is scaled by share / minibatch (the costs average over the minibatch they see), so the
  summed gradients are those of the whole minibatch;
- batchnorm adds its per-channel sums over the processes in forward and backward (`allreduce`, which the
  trainer passes to Net.forward, read by layers/norm.py), so its statistics are those of the whole minibatch;
- after backward ONE Allreduce sums a flat buffer holding every learned gradient, the costs and error
  rates (weighted by cases) and a stop flag (Ctrl-C on any process), so every process updates with the
  same numbers and stops at the same minibatch.

A minibatch with fewer cases than processes (the last of a batch file) is computed whole by every process
and counted by rank 0 only (weight 0 elsewhere), which keeps every collective in step.

With K = 1 every method returns its input unchanged and nothing is summed.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from convnet_cli.errors import DataError
from convnet_cli.parallel import shares


def batches_digest(batchset) -> dict:
    """What every process must see alike in its batch folder, as short comparable values: a rank with other
    batch files (a copy out of date, a node-local folder) hangs in a collective when its counts differ and
    trains on other data when they agree."""
    def digest(a) -> str:
        return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()[:16]

    sizes = []
    for b in batchset.batch_numbers:
        try:
            sizes.append(os.path.getsize(batchset.batch_file(b)))
        except OSError:
            sizes.append(None)
    return {
        "batch files": batchset.batch_numbers,
        "label names": list(batchset.label_names),
        "data shape": list(batchset.data_shape),
        "train range": list(batchset.train_range),
        "test range": list(batchset.test_range),
        "cases per batch": batchset.meta.get("batch_cases"),   # from batches.meta: no batch file is read
        "normalisation (data_mean, data_std digest)": digest(batchset.data_mean) + digest(batchset.data_std),
        "batch file sizes": sizes,
    }


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_same_batches(world, batchset):
    """DataError on every process (the same one line) unless all processes see the same batch folder."""
    if world.size == 1:
        return
    every = world.allgather((os.path.abspath(batchset.batch_dir), batches_digest(batchset)))
    root_dir, root = every[0]
    for rank, (folder, theirs) in enumerate(every[1:], start=1):
        for key, value in root.items():
            if theirs.get(key) != value:
                raise DataError(
                    f"--data-path: rank {rank} sees other batches than rank 0 ({key} {_shown(theirs.get(key))} in "
                    f"{folder}, {_shown(value)} in rank 0's {root_dir}); every process must read the same batch "
                    f"folder: put it on a file system all nodes share (or give each node an identical copy)")


class SlicedRandom:
    """The generator of the whole minibatch, cut to rows [lo, hi) of its first axis: `random(shape)` for
    a share draws the whole minibatch's numbers (n rows) and returns this process's rows."""

    def __init__(self, rng, lo: int, hi: int, n: int):
        self.rng, self.lo, self.hi, self.n = rng, lo, hi, n

    def random(self, size=None, dtype=np.float64):
        shape = tuple(size) if hasattr(size, "__len__") else (int(size),)
        if not shape or shape[0] != self.hi - self.lo:
            raise ValueError(f"SlicedRandom: a draw of shape {shape} is not one row per case of the share")
        return self.rng.random((self.n,) + shape[1:], dtype=dtype)[self.lo:self.hi]


class DataParallel:
    def __init__(self, world, net):
        self.world = world
        self.net = net
        self.size = world.size
        self.is_root = world.is_root
        self.stop = False        # Ctrl-C seen on some process at the last sum
        self.weight = 1.0        # 1, or 0 where a too-small minibatch is counted by rank 0 alone
        self.counted = 0.0       # cases of the current minibatch this process counts
        self.grad_scale = 1.0    # the share of the current minibatch's cost gradient this process owes
        # the sum over the processes of batchnorm's per-channel sums (Net.forward's allreduce), or None
        self.allreduce = None
        if self.size > 1:
            world.attach(net.backend)
            self.allreduce = self._sum_weighted

    def _sum_weighted(self, local):
        """Batchnorm's per-channel sums over the processes (float64 (m,) array on the net's device)."""
        if self.weight != 1.0:
            local = local * self.weight
        return self.world.allreduce(local)

    # -- one minibatch --------------------------------------------------------------------------------
    def share(self, mb, rng):
        """(x, labels, rng) of this process's share of minibatch `mb`, with its dropout generator; sets
        `grad_scale`, which the trainer passes to Net.backward."""
        if self.size == 1:
            return mb.x, mb.labels, rng
        n = int(mb.x.shape[0])
        lo, hi = self._bounds(n)
        self.counted = self.weight * (hi - lo)
        self.grad_scale = self.counted / n
        return mb.x[lo:hi], mb.labels[lo:hi], SlicedRandom(rng, lo, hi, n)

    def _bounds(self, n: int) -> tuple:
        if n < self.size:
            self.weight = 1.0 if self.is_root else 0.0
            return 0, n
        self.weight = 1.0
        return shares(n, self.size)[self.world.rank]

    def test_share(self, mb):
        """(x, labels, cases counted here) of a test minibatch."""
        if self.size == 1:
            return mb.x, mb.labels, int(mb.x.shape[0])
        n = int(mb.x.shape[0])
        lo, hi = self._bounds(n)
        return mb.x[lo:hi], mb.labels[lo:hi], int(round((hi - lo) * self.weight))

    def stop_requested(self, intr) -> bool:
        """Ctrl-C: this process's flag alone, or under K > 1 any process's flag as of the last sum."""
        return intr.requested if self.size == 1 else self.stop

    def combine(self, grads: dict, costs: dict, n: int, intr) -> dict:
        """Sum the gradients (in place in `grads`), costs and the Ctrl-C flags over the processes in one
        Allreduce. Returns the costs of the whole minibatch of n cases: {layer: (cost, metrics)}."""
        if self.size == 1:
            return costs
        net = self.net
        xp = net.xp
        keys = [(name, p) for name in grads for p in sorted(grads[name]) if p in net.by_name[name].learned]
        count = self.counted
        tail = []
        for _, (cost, metrics) in costs.items():
            tail.append(cost * count)
            tail.extend(0.0 if v is None else v * count for v in metrics.values())
        tail.append(1.0 if intr.requested else 0.0)
        dtype = grads[keys[0][0]][keys[0][1]].dtype if keys else np.float32
        parts = [grads[name][p].reshape(-1) for name, p in keys]
        parts.append(xp.asarray(np.asarray(tail, dtype=dtype)))
        buf = xp.concatenate(parts)
        if not self.weight:  # the whole minibatch again, counted by rank 0: batchnorm's dx here is not ours
            buf[:buf.size - len(tail)] = 0
        buf = self.world.allreduce(buf)
        offset = 0
        for name, p in keys:
            g = grads[name][p]
            grads[name][p] = buf[offset:offset + g.size].reshape(g.shape)
            offset += g.size
        tail = np.asarray(net.backend.xp.asnumpy(buf[offset:]) if net.backend.is_gpu else buf[offset:],
                          dtype=np.float64)
        self.stop = bool(tail[-1] > 0)
        out, i = {}, 0
        for name, (_, metrics) in costs.items():
            cost = float(tail[i]) / n
            i += 1
            summed = {}
            for k, v in metrics.items():
                summed[k] = None if v is None else float(tail[i]) / n
                i += 1
            out[name] = (cost, summed)
        return out

    def sum_totals(self, totals: dict, cases: int) -> tuple:
        """The test's (totals, cases) summed over the processes (see trainer._accumulate)."""
        if self.size == 1:
            return totals, cases
        flat = [v for t in totals.values() for v in t.values() if v is not None]
        buf = np.asarray(flat + [cases], dtype=np.float64)
        self.world.allreduce(buf)
        i = 0
        for t in totals.values():
            for k, v in t.items():
                if v is not None:
                    t[k] = float(buf[i])
                    i += 1
        return totals, int(round(buf[-1]))

    def gather_scores(self, scores):
        """The test's per-case scores (train/best.py's Scores: the ROC AUC, the classes' AP) of every process, on every
        process: each holds those of its own shares."""
        if self.size == 1:
            return scores
        scores.parts = [part for parts in self.world.allgather(scores.parts) for part in parts]
        return scores

    def first_nonfinite(self) -> str | None:
        """The layer whose output went non-finite first, on the lowest rank where one did."""
        name = self.net.first_nonfinite()
        if self.size == 1:
            return name
        return next((x for x in self.world.allgather(name) if x), None)
