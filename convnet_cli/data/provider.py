"""Stream the batch files of a range as minibatches: seeded order, normalisation, augmentation, prefetch.

`DataProvider.iter_epoch(epoch, skip=0)` yields (batchnum, minibatches); each minibatch is a
`Minibatch(x, labels, filenames)` with x: (N, H, W, C) float32 on the backend (the case's (C, H, W) array
transposed to NHWC), normalised as (x - data_mean) / max(data_std, 1e-6) with the batches.meta statistics,
and labels: (N,) int32 on the backend — or (N, K) float32 soft targets when mixup is on. The last
minibatch of a batch file may hold fewer than `mini` cases.

Randomness never comes from a running generator, so a run resumed at a batch boundary sees the same data:
with train=True the order of batch files is drawn from default_rng([seed, epoch]), the shuffle of cases
inside batch b from default_rng([seed, epoch, b]), and its augmentations from default_rng([seed, epoch, b, 1]).
With train=False: ascending batch numbers, no shuffle, no augmentation.

Memory: the next batch file is read and converted in one background thread while the current one is
consumed, never more than one ahead; the previous batch is released (its minibatch iterator closed) before
the next is taken. So about two batches live at once — three for a moment while the next is converted.

On a GPU backend the loader thread copies each batch file to the device once, in its stored dtype, through
pinned host memory on a non-blocking side stream, while the previous batch trains; the conversion to
float32, normalisation and augmentation run there on the device, and minibatches are slices of the device
copy. The random draws stay on the host (the same numbers as on the CPU). Before the side stream writes a
new batch it waits for the training stream to finish with the memory the previous batch released.

Augmentations (train only, after normalisation): see data/augment.py, which holds their registry.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from convnet_cli.data.augment import AugmentContext, apply_augmentations, check_labels, parse_augment
from convnet_cli.errors import ConfigError, DataError

STD_FLOOR = 1e-6


@dataclass
class Minibatch:
    x: object           # (N, H, W, C) float32 device array
    labels: object      # what the net's labels input gets, on the device: (N,) int32 class indices, or (N, K)
                        # float32 targets (multi-label: 1 / 0 / -1 unknown; mixup: soft)
    filenames: list
    targets: object = None  # the cases' data/targets.py Targets on the host (before augmentation)


def _rng(*words):
    return np.random.default_rng([int(w) & 0xFFFFFFFFFFFFFFFF for w in words])


class DataProvider:
    """Minibatches of batch files `batches` of a BatchSet (see the module docstring)."""

    def __init__(self, batchset, batches, mini: int, backend, *, seed=0, train=True, augment=(), normalize=True,
                 balance=False):
        self.batchset = batchset
        self.batches = [int(b) for b in batches]
        present = set(batchset.batch_numbers)
        missing = [b for b in self.batches if b not in present]
        if missing:
            have = batchset.batch_numbers
            raise DataError(f"{batchset.batch_dir}: batch {missing[0]} is not there (it holds "
                            f"{'batches ' + str(have[0]) + '-' + str(have[-1]) if have else 'none'}); "
                            "check --train-range / --test-range")
        if int(mini) < 1:
            raise ConfigError(f"--mini {mini}: must be at least 1")
        self.mini = int(mini)
        self.backend = backend
        self.seed = int(seed)
        self.train = bool(train)
        self.augment = parse_augment(augment) if self.train else ()
        self.balance = bool(balance) and self.train  # data/balance.py
        self.normalize = bool(normalize)
        self.num_classes = len(batchset.label_names)
        check_labels(self.augment, self.num_classes)
        self._aug_ctx = AugmentContext(self.mini, self.num_classes, str(batchset.batch_dir))
        c, h, w = batchset.data_shape
        self.data_shape = (c, h, w)
        if self.normalize:
            mean = np.asarray(batchset.data_mean, np.float32).reshape(c, h, w).transpose(1, 2, 0)
            std = np.asarray(batchset.data_std, np.float32).reshape(c, h, w).transpose(1, 2, 0)
            self._mean = np.ascontiguousarray(mean)
            self._inv_std = np.ascontiguousarray(1.0 / np.maximum(std, STD_FLOOR)).astype(np.float32)
        self.loader_threads = set()   # idents of threads that prepared batches (for tests)

    # ---- sizes and order --------------------------------------------------------------------------
    def num_cases(self) -> int:
        return int(sum(self.batchset.num_cases(b) for b in self.batches))

    def num_minibatches(self) -> int:
        return int(sum(-(-self.batchset.num_cases(b) // self.mini) for b in self.batches))

    def epoch_order(self, epoch: int) -> list:
        """The batch numbers of `epoch` in the order they are served."""
        if not self.train:
            return sorted(self.batches)
        return [self.batches[i] for i in _rng(self.seed, epoch).permutation(len(self.batches))]

    # ---- iteration --------------------------------------------------------------------------------
    def iter_epoch(self, epoch: int, skip: int = 0):
        """Yield (batchnum, iterator of Minibatch) for each batch file of the epoch, after the first `skip`."""
        order = self.epoch_order(epoch)[int(skip):]
        if not order:
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convnet-batch-loader")
        future = pool.submit(self._prepare, epoch, order[0], self._training_point())
        current = None
        try:
            for k, bnum in enumerate(order):
                if current is not None:
                    current.close()      # frees the previous batch even if the consumer left it half-read
                    current = None
                prepared = future.result()
                future = (pool.submit(self._prepare, epoch, order[k + 1], self._training_point())
                          if k + 1 < len(order) else None)
                current = self._minibatches(prepared)
                del prepared
                yield bnum, current
        finally:
            if current is not None:
                current.close()
            if future is not None:
                future.cancel()
            pool.shutdown(wait=True)

    def _training_point(self):
        """On a GPU: an event on the training (current) stream, recorded after everything queued so far."""
        if not getattr(self.backend, "is_gpu", False):
            return None
        return self.backend.xp.cuda.get_current_stream().record()

    def _minibatches(self, prepared):
        x, y, names, targets = prepared
        del prepared
        be = self.backend
        on_host = not getattr(be, "is_gpu", False)
        soft = y.ndim == 2
        if not on_host:  # x and y are on the device already: slices, no copies
            try:
                for a in range(0, x.shape[0], self.mini):
                    yield Minibatch(x[a:a + self.mini], y[a:a + self.mini], names[a:a + self.mini],
                                    targets.take(np.arange(a, min(a + self.mini, len(targets)))))
            finally:
                del x, y, names
            return
        try:
            for a in range(0, x.shape[0], self.mini):
                xb = x[a:a + self.mini]
                # a copy on the CPU, so a kept minibatch does not pin the whole batch
                xb = be.asarray(xb.copy(), dtype=np.float32)
                yb = be.asarray(y[a:a + self.mini], dtype=np.float32 if soft else np.int32)
                yield Minibatch(xb, yb, names[a:a + self.mini],
                                targets.take(np.arange(a, min(a + self.mini, len(targets)))))
        finally:
            del x, y, names

    # ---- one batch file, in the loader thread ----------------------------------------------------
    def _prepare(self, epoch, bnum, after=None):
        """Batch bnum -> (x (n, H, W, C) float32 host, labels (n,) int64 or (n, K) float32, filenames,
        Targets), in the order served.

        On a GPU backend: the same on the device (labels int32 or float32), see _prepare_gpu."""
        if getattr(self.backend, "is_gpu", False):
            return self._prepare_gpu(epoch, bnum, after)
        self.loader_threads.add(threading.get_ident())
        raw, scale, targets, names = self.batchset.read_batch(bnum)
        n = raw.shape[0]
        c, h, w = self.data_shape
        view = raw.reshape(n, c, h, w).transpose(0, 2, 3, 1)          # NHWC view, no copy yet
        if self.train:
            perm = self._order(epoch, bnum, targets, n)
            x = view[perm]                                              # the one copy
            targets = targets.take(perm)
            names = [names[i] for i in perm]
        else:
            x = np.ascontiguousarray(view)
            if not x.flags.writeable or np.shares_memory(x, raw):
                x = x.copy()  # never normalise the file's own buffer in place
        del raw, view
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        if scale is not None:
            x *= np.float32(scale[1])
            x += np.float32(scale[0])
        if self.normalize:
            x -= self._mean
            x *= self._inv_std
        y = targets.array()
        if self.augment:
            x, y = apply_augmentations(self.augment, x, y, _rng(self.seed, epoch, bnum, 1), np, self._aug_ctx)
        return x, y, names, targets

    def _order(self, epoch, bnum, targets, n):
        """The order of batch bnum's cases in this epoch: a shuffle, or with --balance a class-balanced draw."""
        rng = _rng(self.seed, epoch, bnum)
        return targets.balanced_order(rng) if self.balance else rng.permutation(n)

    def _prepare_gpu(self, epoch, bnum, after):
        """_prepare on the device: gather the cases in their shuffled order into pinned host memory (in the
        stored dtype), copy them on the side stream, convert, normalise and augment there. `after`: an event
        of the training stream; nothing is written to the device before it (the memory a released batch
        gave back may still be read by queued training kernels). Returns when the batch is on the device."""
        import cupy
        import cupyx

        self.loader_threads.add(threading.get_ident())
        raw, scale, targets, names = self.batchset.read_batch(bnum)
        n = raw.shape[0]
        c, h, w = self.data_shape
        with cupy.cuda.Device(self.backend.device_id or 0):
            stream = self._side_stream()
            pinned = cupyx.empty_pinned(raw.shape, dtype=raw.dtype)
            if self.train:
                perm = self._order(epoch, bnum, targets, n)
                np.take(raw, perm, axis=0, out=pinned)                     # the one host copy
                targets = targets.take(perm)
                names = [names[i] for i in perm]
            else:
                pinned[...] = raw
            del raw
            with stream:
                if after is not None:
                    stream.wait_event(after)
                stored = cupy.empty(pinned.shape, dtype=pinned.dtype)
                stored.set(pinned, stream=stream)
                x = cupy.ascontiguousarray(stored.reshape(n, c, h, w).transpose(0, 2, 3, 1), dtype=cupy.float32)
                del stored
                if scale is not None:
                    x *= np.float32(scale[1])
                    x += np.float32(scale[0])
                if self.normalize:
                    mean, inv_std = self._device_stats(cupy)
                    x -= mean
                    x *= inv_std
                y = targets.array()
                if self.augment:
                    x, y = apply_augmentations(self.augment, x, y, _rng(self.seed, epoch, bnum, 1), cupy, self._aug_ctx)
                y = cupy.asarray(y, dtype=np.float32 if y.ndim == 2 else np.int32)
                stream.synchronize()  # blocks this loader thread only
            del pinned
        return x, y, names, targets

    def _side_stream(self):
        stream = getattr(self, "_stream", None)
        if stream is None:
            import cupy

            stream = self._stream = cupy.cuda.Stream(non_blocking=True)
        return stream

    def _device_stats(self, cupy):
        stats = getattr(self, "_stats_on_device", None)
        if stats is None:
            stats = self._stats_on_device = (cupy.asarray(self._mean), cupy.asarray(self._inv_std))
        return stats
