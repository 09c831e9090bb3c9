"""The one writer of batch sets, beside their reader (batch_files.py): every way make-batches makes cases
(clips of a folder, windows of long recordings, either split over MPI processes) hands them to it.

    with writing_set(batch_dir, overwrite) as staging:      # BATCH_DIR locked, an interrupted install finished
        w = SetWriter(staging, num_vis, dtype, kind)        # kind: data/targets.py's class of the targets
        w.write_all(source_batches)                          # a source yields Batch(cols (num_vis, n) float32,
                                                             #   Targets, names, is_train, copies)
        files = w.finish(label_names, spec, skipped, source)  # skipped.txt and batches.meta
        install_set(staging, batch_dir, files)               # the set replaces the old one at once

A source (ingest/make_batches.py's ClipSource, ingest/recordings.py's _window_batches) plans its cases and
yields them a batch at a time, in the order of the set (the training range first); the writer numbers the
files, takes the training range's statistics and builds the one batches.meta.

The class deal (`deal`: every class into every batch, round robin), the noisy copies' place in the plan
(`plan_copies`: the copies are cases n, n+1, ... of the set, dealt with the training cases anew), the
training range's statistics
(`Moments`: per value of a case, merged with Chan's update in float64; `features.normalize` then reduces them
to one mean/std per frequency row or one for all), the options every set takes (`check_set_options`) and the
estimate of the set's size against the free disk (`check_fits`) live here too, so that a source of cases only
plans and extracts.

Nothing is written in place: files go to a hidden staging folder inside BATCH_DIR, and only when every batch
is written are they renamed over the old ones (batches.meta last; data/batch_set_swap.py). A failure (a disk
that runs full, Ctrl-C) removes the staging folder and leaves what was there before untouched.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from convnet_cli.data.batch_files import META, encode_batch
from convnet_cli.data.batch_set_swap import (STAGING_PREFIX, BatchDirLock, committed, finish_interrupted,
                                             recover)
from convnet_cli.data.skipped_list import format_skipped
from convnet_cli.data.targets import ClassTargets
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import write_pickle_atomic, write_text_atomic

DTYPES = ("float32", "float16", "uint8")
SKIPPED = "skipped.txt"
JOBS_PER_CPU = 4    # --jobs above this many per CPU is refused (max_jobs)
_BATCH_FILE = re.compile(r"^data_batch_\d+$")


class NothingReadError(DataError):
    """Not one audio file (recording) could be decoded: the run produced nothing (exit 1)."""

    exit_code = 1


# ---- the plan: the class deal ------------------------------------------------------------------------

def deal(idx, strata, k: int, rng) -> list:
    """idx (cases) split into k near-equal batches, each stratum (class) dealt round-robin so every batch holds
    every class where possible, each batch shuffled. strata: (n,) int per case of the whole set (for
    multi-label targets, the class of largest overlap; -1, none, is a stratum too)."""
    idx = np.asarray(idx, dtype=np.int64)
    k = min(int(k), idx.size)
    if k <= 0:
        return []
    lab = np.asarray(strata)[idx]
    order = np.concatenate([rng.permutation(idx[lab == c]) for c in np.unique(lab)])
    return [rng.permutation(order[b::k]) for b in range(k)]


@dataclass
class CopyPlan:
    """The noisy copies of a set's training cases (ingest/noise.py) as cases n, n+1, ... after its n cases."""

    source: np.ndarray         # int64 (n + m,): the case each case is (its own index) or copies
    copy_no: np.ndarray        # int64 (n + m,): 0 for the cases themselves, 1..copies for a copy
    train_batches: list        # the training cases and their copies, dealt anew into batches


def plan_copies(n: int, train, pairs, strata, batch_size: int, rng) -> CopyPlan:
    """The plan of `pairs` [(case, copy number)] (the copies of training cases, in the order the source makes
    them) added to a set of n cases: the training cases `train` and the copies dealt by class (`strata` of the
    n cases) into ceil(cases / batch_size) batches with `rng`; the test batches stay as they were."""
    pairs = list(pairs)
    src = np.concatenate([np.arange(n, dtype=np.int64), np.asarray([c for c, _ in pairs], dtype=np.int64)])
    copy_no = np.concatenate([np.zeros(n, np.int64), np.asarray([k for _, k in pairs], dtype=np.int64)])
    cases = np.concatenate([np.asarray(train, dtype=np.int64), np.arange(n, n + len(pairs), dtype=np.int64)])
    return CopyPlan(src, copy_no, deal(cases, np.asarray(strata)[src], batch_count(cases.size, batch_size), rng))


# ---- the training range's statistics --------------------------------------------------------------------

class Moments:
    """Per-value count/mean/M2 over column-batches (num_vis, n), merged with Chan's update in float64."""

    def __init__(self, num_vis):
        self.count = 0
        self.mean = np.zeros(num_vis, np.float64)
        self.m2 = np.zeros(num_vis, np.float64)

    def add(self, cols):
        self.merge(*self.batch_stats(cols))

    @staticmethod
    def batch_stats(cols):
        """(n, mean, M2) of one column-batch: what `merge` adds (a process of a sharded run sends these)."""
        n = cols.shape[1]
        if n == 0:
            return 0, None, None
        x = cols.astype(np.float64)
        bm = x.mean(axis=1)
        return n, bm, ((x - bm[:, None]) ** 2).sum(axis=1)

    def merge(self, n, bm, bm2):
        if n == 0:
            return
        total = self.count + n
        delta = bm - self.mean
        self.mean += delta * (n / total)
        self.m2 += bm2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def result(self, normalize: str = "pixel", shape=None):
        """(mean, std), float32 (num_vis, 1): per value of a case (`pixel`, cuda-convnet's data_mean), or
        pooled over the values of each frequency row (`band`: per (C, H) over time and cases) or over all of
        them (`global`), and then given to every value of the group, so that every reader normalises with the
        same per-value arrays whichever the mode. Pooling is exact: every value has the same count, so a
        group's mean is the mean of its values' means and its M2 their M2s plus count * their spread."""
        mean, m2 = self.mean, self.m2
        if normalize != "pixel":
            c, h, w = (int(v) for v in shape)
            groups = (c * h, w) if normalize == "band" else (1, c * h * w)
            gm = mean.reshape(groups).mean(axis=1, keepdims=True)
            gm2 = (m2.reshape(groups).sum(axis=1, keepdims=True)
                   + self.count * ((mean.reshape(groups) - gm) ** 2).sum(axis=1, keepdims=True))
            mean = np.broadcast_to(gm, groups).reshape(-1)
            m2 = np.broadcast_to(gm2 / groups[1], groups).reshape(-1)
        std = np.sqrt(m2 / max(self.count, 1))
        return mean.astype(np.float32).reshape(-1, 1), std.astype(np.float32).reshape(-1, 1)


# ---- options and limits every set takes ---------------------------------------------------------------

def max_jobs() -> int:
    """The most --jobs accepted: JOBS_PER_CPU worker processes per CPU this process may use. Each worker costs
    some 60 MB (a Python with NumPy, SciPy and soundfile), and more workers than CPUs decode no faster."""
    from convnet_cli.backend import default_threads

    return JOBS_PER_CPU * max(1, default_threads())


def check_set_options(batch_size, test_fraction, dtype, jobs, seed):
    """ConfigError (one line naming the flag) for a make-batches option out of range."""
    if int(batch_size) < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    if not (0.0 <= float(test_fraction) < 1.0):
        raise ConfigError(f"--test-fraction {test_fraction}: must be at least 0 and below 1")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if jobs is not None and int(jobs) < 1:
        raise ConfigError(f"--jobs {jobs}: must be at least 1")
    if jobs is not None and int(jobs) > max_jobs():
        cpus = max_jobs() // JOBS_PER_CPU
        raise ConfigError(f"--jobs {jobs}: more than {JOBS_PER_CPU} worker processes per CPU ({cpus} CPU"
                          f"{'s' if cpus != 1 else ''} here: at most {max_jobs()}); each takes some 60 MB and more "
                          f"of them than CPUs decode no faster: give --jobs {cpus} or leave it out")
    if int(seed) < 0:
        raise ConfigError(f"--seed {seed}: must be 0 or more")


CASE_OVERHEAD = 64   # bytes a case costs besides its values: its name and label in the pickle


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def _free_space(batch_dir):
    """(the folder asked, its free bytes) for BATCH_DIR, or its nearest existing parent; None when unknown."""
    folder = os.path.abspath(batch_dir)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return folder, shutil.disk_usage(folder).free
    except OSError:
        return None


def check_fits(batch_dir, num_vis, dtype, cases, added=0, added_flag=None, flag=None, spill=False, fix=""):
    """ConfigError when a set of `cases` + `added` cases cannot fit in the free space of BATCH_DIR's file
    system, found before anything is decoded. The one to blame: `added_flag` when the set without the `added`
    cases (noisy copies) would fit, else `flag` (what sets the number of cases, e.g. --window-hop), else BATCH_DIR.
    spill: the features are first written as float32 rows to the staging folder (make-batches --annotations),
    which holds them until every batch is written."""
    where = _free_space(batch_dir)
    if where is None:
        return
    folder, free = where
    per_case = int(num_vis) * np.dtype(dtype).itemsize + CASE_OVERHEAD + (4 * int(num_vis) if spill else 0)
    need = (int(cases) + int(added)) * per_case
    if need <= free:
        return
    blame = added_flag if added and int(cases) * per_case <= free else (flag or batch_dir)
    spilled = " and their float32 features while they are extracted" if spill else ""
    raise ConfigError(f"{blame}: the batch set needs about {_size(need)} ({int(cases) + int(added):,} cases of "
                      f"{int(num_vis):,} values as {dtype}{spilled}), but {folder} has {_size(free)} free; "
                      f"{fix or 'free some space, or choose another BATCH_DIR'}")


# ---- the folder: lock, staging, refusal --------------------------------------------------------------

def existing_batch_files(batch_dir) -> list:
    if not os.path.isdir(batch_dir):
        return []
    return sorted(n for n in os.listdir(batch_dir) if n == META or _BATCH_FILE.match(n))


def refuse_existing(batch_dir, overwrite, completed=None):
    """DataError when BATCH_DIR is a file, or holds batch files and `overwrite` is not given.

    A set a killed make-batches left half moved into place is finished first (docs/COMMANDS.md: the next make-batches
    finishes an interrupted move), and then counts as existing. completed: whether the caller has just done
    that under the lock (None: do it here, taking the lock when a swap is pending)."""
    if os.path.exists(batch_dir) and not os.path.isdir(batch_dir):
        raise DataError(f"{batch_dir}: is a file; BATCH_DIR must be a folder (new or empty)")
    if completed is None:
        completed = finish_interrupted(batch_dir) if os.path.isdir(batch_dir) else False
    old = existing_batch_files(batch_dir)
    if old and not overwrite:
        done = ("; the set an interrupted make-batches left half installed there was completed first"
                if completed else "")
        raise DataError(f"{batch_dir}: already holds batch files ({', '.join(old[:3])}{' …' if len(old) > 3 else ''})"
                        f"{done}; pass --overwrite to replace them, or choose another folder")


@contextmanager
def writing_set(batch_dir, overwrite):
    """The staging folder a new set is written into, with BATCH_DIR locked against a second make-batches,
    a set an earlier make-batches left half-installed finished first, and the existing files checked again
    under the lock. On failure the staging folder goes (and BATCH_DIR, when it was made here), unless the
    swap record already names it: from that commit on its files are the set readers see, and the next
    make-batches finishes moving them."""
    created = not os.path.exists(batch_dir)
    try:
        os.makedirs(batch_dir, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{batch_dir}: cannot create the batch folder ({exc.strerror or exc})") from None
    lock = BatchDirLock(batch_dir)
    staging = None
    try:
        refuse_existing(batch_dir, overwrite, completed=recover(batch_dir))
        try:
            staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=batch_dir)
        except OSError as exc:
            raise DataError(f"{batch_dir}: cannot write into the batch folder ({exc.strerror or exc})") from None
        yield staging
    except BaseException:
        if staging is None or not committed(batch_dir, staging):
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if created:
                lock.release()
                try:
                    os.rmdir(batch_dir)
                except OSError:
                    pass
        raise
    finally:
        lock.release()
    shutil.rmtree(staging, ignore_errors=True)


# ---- the batch files and the meta --------------------------------------------------------------------

@dataclass
class Batch:
    """One batch file's cases, as a source hands them to the writer."""

    cols: np.ndarray          # (num_vis, n) float32: a case per column
    targets: object           # data/targets.py Targets of the n cases
    names: list               # the cases' names (clip paths, recording@start)
    is_train: bool            # of the training range (its statistics are taken)
    copies: int = 0           # how many of the cases are noisy copies


class SetWriter:
    """The batch files of one set, written one after the other into `staging` (numbered data_batch_1, 2, ...
    in the order given: training batches first), with the training range's statistics taken as they go,
    then skipped.txt and batches.meta (`finish`)."""

    def __init__(self, staging: str, num_vis: int, dtype: str = "float32", kind=ClassTargets):
        self.staging = staging
        self.kind = kind                   # the kind of target (data/targets.py): batches.meta says which
        self.num_vis = int(num_vis)
        self.dtype = dtype
        self.files, self.sizes = [], []    # batch file names and their cases, batch 1 first
        self.n_train = 0                   # the first n_train files form the training range
        self.copies = 0                    # noisy copies written (ingest/noise.py), counted in sizes
        self.moments = Moments(num_vis)    # the training batches' statistics, as a reader will see them
        self.t_write = 0.0

    def write_all(self, batches) -> "SetWriter":
        """Write every Batch a source yields, in order (the training range first)."""
        for b in batches:
            self.write(b.cols, b.targets, b.names, b.is_train, b.copies)
        return self

    def write(self, cols, targets, names, is_train: bool, copies: int = 0) -> str:
        """One batch file of the cases in `cols` (num_vis, n) float32 with their Targets and names."""
        t0 = time.perf_counter()
        batch, seen = encode_batch(cols, targets, names, self.dtype)
        name = f"data_batch_{len(self.files) + 1}"
        write_pickle_atomic(os.path.join(self.staging, name), batch)
        self._count(name, len(names), Moments.batch_stats(seen) if is_train else None, is_train, copies)
        self.t_write += time.perf_counter() - t0
        return name

    @staticmethod
    def write_part(staging: str, part: str, cols, targets, names, dtype: str, is_train: bool):
        """A batch file written by another process (under MPI) as staging/part, for rank 0 to `adopt`:
        returns its training statistics (Moments.batch_stats) when it is a training batch, else None."""
        batch, seen = encode_batch(cols, targets, names, dtype)
        write_pickle_atomic(os.path.join(staging, part), batch)
        return Moments.batch_stats(seen) if is_train else None

    def adopt(self, part: str, cases: int, stats, is_train: bool, copies: int = 0) -> str:
        """Take staging/part (write_part's) as the next batch file, with its statistics."""
        t0 = time.perf_counter()
        name = f"data_batch_{len(self.files) + 1}"
        os.replace(os.path.join(self.staging, part), os.path.join(self.staging, name))
        self._count(name, cases, stats, is_train, copies)
        self.t_write += time.perf_counter() - t0
        return name

    def _count(self, name, cases, stats, is_train, copies):
        self.files.append(name)
        self.sizes.append(int(cases))
        self.copies += int(copies)
        if is_train:
            self.moments.merge(*stats)
            self.n_train = len(self.files)

    @property
    def train_range(self) -> list:
        return [1, self.n_train] if self.n_train else []

    @property
    def test_range(self) -> list:
        return [self.n_train + 1, len(self.files)] if len(self.files) > self.n_train else []

    @property
    def train_cases(self) -> int:
        return int(sum(self.sizes[:self.n_train]))

    @property
    def test_cases(self) -> int:
        return int(sum(self.sizes[self.n_train:]))

    def finish(self, label_names, spec, skipped, source: str, extra: dict | None = None) -> list:
        """Write skipped.txt (`skipped`: [(name, reason)]) and batches.meta (the keys of data/batch_files.py,
        the statistics by `spec.normalization`, the kind of target's entries, and `extra`: what the source
        adds) into staging; returns the names of every file of the set, batches.meta last. DataError (naming
        `source`) when the statistics overflowed; the callers check first that some training case was read."""
        if self.moments.count == 0:
            raise DataError(f"{source}: no case of the training range could be read; nothing was written")
        mean, std = self.moments.result(spec.normalization, spec.shape)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise DataError(f"{source}: the training range's mean/std overflowed (features too large to sum); "
                            "nothing was written; check the --features settings and the loudest files")
        meta = {
            "label_names": list(label_names),
            "num_vis": self.num_vis,
            "data_shape": list(spec.shape),
            "num_cases_per_batch": max(self.sizes),
            "num_batches": len(self.files),
            "train_range": self.train_range,
            "test_range": self.test_range,
            "data_mean": mean,
            "data_std": std,
            "features": spec.to_dict(),
            "skipped": len(skipped),
            "batch_cases": list(self.sizes),
            "dtype": self.dtype,
        }
        meta.update(self.kind.meta_entries())
        meta.update(extra or {})
        if isinstance(meta.get("window"), dict):   # SPEC 11: `features` also holds window_hop, as it always has
            meta["features"]["window_hop"] = float(meta["window"]["hop"])
        t0 = time.perf_counter()
        write_text_atomic(os.path.join(self.staging, SKIPPED), format_skipped(skipped))
        write_pickle_atomic(os.path.join(self.staging, META), meta)
        self.t_write += time.perf_counter() - t0
        return self.files + [SKIPPED, META]


def batch_count(n: int, batch_size: int) -> int:
    """The number of batches for n cases of at most batch_size each (at least one when there are cases)."""
    return max(1, math.ceil(n / batch_size)) if n else 0
