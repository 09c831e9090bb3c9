"""Audio folders -> cuda-convnet batch files (the audio layouts: README.md, 'From a folder of audio to a CSV';
the batch file format: data/batch_files.py).

The plan is made before any audio is decoded: clips are split into train and test (stratified by class, or
by `--split-by` group), shuffled with `--seed`, and dealt class by class round-robin into K batches so every
batch holds every class where possible. Then batch after batch is decoded (in `--jobs` processes), turned
into features and written, so memory holds about one batch whatever the size of the set. The training
range's per-feature mean and std are accumulated as its batches go by (Chan's pairwise update, float64).

Test range: the last ceil(F * K) of the K = ceil(n / batch_size) batches (at least one batch each side
when F > 0 and there are two clips or more); the clips are dealt evenly, so no batch exceeds batch_size.

Nothing is written in place: files go to a hidden staging folder inside BATCH_DIR, and only when every
batch is written are they renamed over the old ones (batches.meta last). A failure (a disk that runs full,
Ctrl-C) removes the staging folder and leaves what was there before untouched.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from contextlib import closing, contextmanager
from dataclasses import dataclass

import numpy as np

from convnet_cli.data.batch_files import META, encode_batch
from convnet_cli.data.skipped_list import format_skipped
from convnet_cli.data.batch_set_swap import (STAGING_PREFIX, BatchDirLock, committed, finish_interrupted, install_set,
                                             recover)
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import write_pickle_atomic, write_text_atomic
from convnet_cli.ingest.audio import AudioError, fit_length, read_audio, resample
from convnet_cli.ingest.features import FeatureSpec, compute_features
from convnet_cli.ingest.noise import copy_name, make_copy
from convnet_cli.ingest.sources import collect_dataset

DTYPES = ("float32", "float16", "uint8")
CHUNK = 32          # clips per task handed to a worker process
JOBS_PER_CPU = 4    # --jobs above this many per CPU is refused (max_jobs)
SKIPPED = "skipped.txt"
_BATCH_FILE = re.compile(r"^data_batch_\d+$")


class NothingReadError(DataError):
    """Not one audio file could be decoded: the run produced nothing (exit 1)."""

    exit_code = 1


# ---- the worker (module level so 'spawn' / 'forkserver' processes can import it) ------------------

def extract_chunk(paths, spec_dict, compute=True, noise=None):
    """Decode, resample, crop/pad and (when `compute`) featurize `paths` on the host.

    An entry of `paths` may be (path, case, copy): then the clip is copy `copy` of case `case`, made by
    ingest/noise.py's make_copy with the NoiseOptions `noise`.

    Returns (array or None, ok positions, [(position, reason)], (decode s, resample s, features s, imports s)).
    The array is (m, 1, H, W) float32 features, or (m, samples) float32 clips when not `compute`.
    The first call in a process imports soundfile / scipy; that time is counted apart ("imports").
    """
    t_import = _import_once("soundfile", "scipy.fft")
    spec = FeatureSpec(**spec_dict)
    n = spec.num_samples
    clips, ok, skipped = [], [], []
    t_decode = t_resample = 0.0
    for j, path in enumerate(paths):
        case = None
        if not isinstance(path, str):
            path, case, copy = path
        t0 = time.perf_counter()
        try:
            x, sr = read_audio(path, crop_to=(spec.sample_rate, n))
        except AudioError as exc:
            skipped.append((j, exc.reason))
            t_decode += time.perf_counter() - t0
            continue
        t_decode += time.perf_counter() - t0
        if sr != spec.sample_rate:
            t_import += _import_once("scipy.signal")
        t1 = time.perf_counter()
        clip = fit_length(resample(x, sr, spec.sample_rate), n)
        if case is not None:
            try:
                clip = make_copy(clip, spec.sample_rate, noise, case, copy)
            except (RuntimeError, OSError, ValueError, DataError) as exc:  # a noise file gone bad since checked
                skipped.append((j, f"noisy copy {copy}: cannot read the noise ({exc})"))
                continue
        clips.append(clip)
        ok.append(j)
        t_resample += time.perf_counter() - t1
    t2 = time.perf_counter()
    out = None
    if clips:
        out = np.stack(clips)
        if compute:
            out = compute_features(out, spec, np)
            copies = {j: paths[j][2] for j in ok if not isinstance(paths[j], str)}
            out, ok = _drop_nonfinite(out, ok, skipped, copies)
    return out, ok, skipped, (t_decode, t_resample, time.perf_counter() - t2, t_import)


def _drop_nonfinite(feats, ok, skipped, copies=None):
    """Clips whose features hold NaN or inf move from `ok` to `skipped`: a set never holds non-finite data.
    copies: {position: copy number} of the noisy copies among them (their reason names the copy's flags)."""
    bad = ~np.isfinite(feats.reshape(feats.shape[0], -1)).all(axis=1)
    if not bad.any():
        return feats, ok
    copies = copies or {}
    for j in np.flatnonzero(bad):
        if ok[j] in copies:
            skipped.append((ok[j], f"noisy copy {copies[ok[j]]}: its features overflow to NaN or inf (the copy is "
                                   "far too loud: lower --gain, or raise --noise-snr)"))
        else:
            skipped.append((ok[j], "its features overflow to NaN or inf (samples far too loud)"))
    keep = np.flatnonzero(~bad)
    return (feats[keep] if keep.size else None), [ok[j] for j in keep]


def _import_once(*modules) -> float:
    """Seconds spent importing those of `modules` not imported yet."""
    import importlib

    t0 = time.perf_counter()
    for m in modules:
        if m not in sys.modules:
            importlib.import_module(m)
    return time.perf_counter() - t0


@contextmanager
def _single_threaded_children():
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


def _mp_context(multiprocessing):
    """'spawn' (safe beside threads and GPUs); 'fork' only where spawn cannot re-import the main script
    (a program read from stdin, whose __main__.__file__ is '<stdin>')."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path is not None and not os.path.exists(path) \
            and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def run_chunks(chunks, spec: FeatureSpec, jobs: int, compute=True, noise=None):
    """chunks: [(key, paths)] -> yield (key, paths, extract_chunk result) in order.

    `jobs` > 1 runs them in that many 'spawn' processes, at most a few chunks in flight per process
    (bounded memory, results consumed in order).
    """
    spec_dict = spec.to_dict()
    chunks = list(chunks)
    jobs = max(1, min(int(jobs), len(chunks)))
    if jobs == 1:
        for key, paths in chunks:
            yield key, paths, extract_chunk(paths, spec_dict, compute, noise)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = _mp_context(multiprocessing)
    pending = deque()
    it = iter(chunks)
    with _single_threaded_children():
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
        try:
            def submit():
                c = next(it, None)
                if c is not None:
                    pending.append((c, pool.submit(extract_chunk, c[1], spec_dict, compute, noise)))

            for _ in range(3 * jobs):
                submit()
            while pending:
                c, fut = pending.popleft()
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    raise DataError(f"a worker process died while reading one of {c[1][0]} … {c[1][-1]} (out of "
                                    "memory, or a file that crashes the decoder); run with --jobs 1 to find "
                                    "out which") from None
                submit()
                yield c[0], c[1], res
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)


def features_for_files(paths, spec: FeatureSpec, jobs=1, backend=None):
    """Features of audio files as make-batches computes them (for `convnet predict` on raw audio).

    Returns (array (n, 1, H, W) float32, ok_paths, skipped [(path, reason)]). The array is a host numpy
    array, or a device array when `backend` is a GPU backend (decoding stays on the host; the features
    are computed on the GPU).
    """
    paths = [os.fspath(p) for p in paths]
    on_gpu = backend is not None and getattr(backend, "is_gpu", False)
    chunks = [(a, paths[a:a + CHUNK]) for a in range(0, len(paths), CHUNK)]
    parts, ok_paths, skipped = [], [], []
    for _, chunk, (arr, ok, bad, _) in run_chunks(chunks, spec, jobs or 1, compute=not on_gpu):
        if arr is not None:
            parts.append(compute_features(backend.asarray(arr), spec, backend.xp) if on_gpu else arr)
        ok_paths.extend(chunk[j] for j in ok)
        skipped.extend((chunk[j], reason) for j, reason in bad)
    xp = backend.xp if on_gpu else np
    if parts:
        out = xp.concatenate(parts) if len(parts) > 1 else parts[0]
    else:
        out = xp.zeros((0,) + spec.shape, dtype=xp.float32)
    return out, ok_paths, skipped


# ---- planning ------------------------------------------------------------------------------------

@dataclass
class Plan:
    batches: list        # index arrays into the dataset, batch 1 first
    num_train: int       # batches[:num_train] are the training range


def split_groups(names, regex: str):
    """Group key of each name: the regex's first group (the whole match if it has none).

    A name the regex does not match is a group of its own. ConfigError for a bad regex or no match at all.
    """
    try:
        rx = re.compile(regex)
    except re.error as exc:
        raise ConfigError(f"--split-by {regex!r}: not a valid regular expression ({exc})") from None
    keys, matched = [], 0
    for name in names:
        m = rx.search(name)
        if m is None:
            keys.append("\0" + name)
            continue
        matched += 1
        keys.append(m.group(1) if rx.groups else m.group(0))
    if matched == 0:
        raise ConfigError(f"--split-by {regex!r} matches none of the {len(names)} file names "
                          f"(e.g. '{names[0]}'); its first group should capture the recording or tape id")
    return keys


def _deal(idx, labels, k, rng):
    """Split idx into k near-equal batches, each class dealt round-robin so every batch holds every class."""
    k = min(k, len(idx))
    if k <= 0:
        return []
    lab = labels[idx]
    order = np.concatenate([rng.permutation(idx[lab == c]) for c in np.unique(lab)])
    return [rng.permutation(order[b::k]) for b in range(k)]


def plan_batches(labels, batch_size: int, test_fraction: float, seed: int, groups=None) -> Plan:
    """Decide which clips go in which batch, before anything is decoded. labels: int64 (n,)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    k = max(1, math.ceil(n / batch_size))
    k_test = 0
    if test_fraction > 0 and n >= 2:
        k = max(k, 2)
        k_test = min(max(math.ceil(test_fraction * k - 1e-9), 1), k - 1)
    test = np.zeros(n, dtype=bool)
    if k_test:
        share = k_test / k
        if groups is None:
            for c in np.unique(labels):
                idx = rng.permutation(np.flatnonzero(labels == c))
                test[idx[:int(round(len(idx) * share))]] = True
            if not test.any():
                test[rng.integers(n)] = True
            if test.all():
                test[rng.integers(n)] = False
        else:
            found = {}
            for i, g in enumerate(groups):
                found.setdefault(g, []).append(i)
            uniq = sorted(found)
            if len(uniq) < 2:
                raise ConfigError(f"--split-by: all {n} clips fall in one group ('{uniq[0]}'); a train/test split "
                                  "needs two groups or more (or use --test-fraction 0)")
            members = {g: np.asarray(found[g], dtype=np.int64) for g in uniq}
            target, count = int(round(n * share)), 0
            for gi in rng.permutation(len(uniq)):
                g = uniq[gi]
                if count + len(members[g]) <= target:
                    test[members[g]] = True
                    count += len(members[g])
            if count == 0:
                smallest = min(uniq, key=lambda g: (len(members[g]), g))
                test[members[smallest]] = True
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    train_batches = _deal(train_idx, labels, k - k_test, rng)
    test_batches = _deal(test_idx, labels, k_test, rng)
    return Plan(train_batches + test_batches, len(train_batches))


def with_copies(ds, plan: Plan, noise, batch_size: int, seed: int):
    """(dataset, plan) with `noise.copies` copies of every training clip added (ingest/noise.py): a copy's
    path entry is (path, case, copy) and its name the clip's marked with the copy; the training clips and
    their copies are dealt anew into ceil(n / batch_size) batches, the test batches stay as planned."""
    n = len(ds)
    train_idx = np.sort(np.concatenate(plan.batches[:plan.num_train])) if plan.num_train else np.zeros(0, np.int64)
    paths, names, source = list(ds.paths), list(ds.names), []
    for copy in range(1, noise.copies + 1):
        for i in train_idx.tolist():
            paths.append((ds.paths[i], i, copy))
            names.append(copy_name(ds.names[i], copy))
            source.append(i)
    labels = np.concatenate([ds.labels, ds.labels[np.asarray(source, dtype=np.int64)]])
    big = dataclasses.replace(ds, paths=paths, names=names, labels=labels)
    all_train = np.concatenate([train_idx, np.arange(n, n + len(source), dtype=np.int64)])
    k = max(1, math.ceil(all_train.size / batch_size)) if all_train.size else 0
    train_batches = _deal(all_train, labels, k, np.random.default_rng([int(seed), 1]))
    return big, Plan(train_batches + list(plan.batches[plan.num_train:]), len(train_batches))


# ---- running statistics -------------------------------------------------------------------------

class _Moments:
    """Per-feature count/mean/M2 over column-batches (num_vis, n), merged with Chan's update in float64."""

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

    def result(self):
        std = np.sqrt(self.m2 / max(self.count, 1))
        return self.mean.astype(np.float32).reshape(-1, 1), std.astype(np.float32).reshape(-1, 1)


# ---- the command's body -------------------------------------------------------------------------

def existing_batch_files(batch_dir) -> list:
    if not os.path.isdir(batch_dir):
        return []
    return sorted(n for n in os.listdir(batch_dir) if n == META or _BATCH_FILE.match(n))


def _progress(enabled, length):
    if not enabled:
        return _NoBar()
    import click

    return click.progressbar(length=length, label="make-batches", file=sys.stderr, show_pos=True,
                             show_eta=True, width=30)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def update(self, n):
        pass


def max_jobs() -> int:
    """The most --jobs accepted: JOBS_PER_CPU worker processes per CPU this process may use. Each worker costs
    some 60 MB (a Python with NumPy, SciPy and soundfile), and more workers than CPUs decode no faster."""
    from convnet_cli.backend import default_threads

    return JOBS_PER_CPU * max(1, default_threads())


def _check_options(batch_size, test_fraction, dtype, jobs, seed):
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


# ---- will it fit: the set's size against the free space of BATCH_DIR's file system ---------------

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


def window_count(duration_s: float, window_s: float, hop_s: float) -> int:
    """len(ingest/windows.py's window_starts(...)), by arithmetic: no array of starts is made."""
    if duration_s + 1e-9 < window_s:
        return 0
    return int(math.floor((duration_s - window_s) / hop_s + 1e-9)) + 1


def check_windows_fit(batch_dir, windows, num_vis, dtype, window_hop, noise=None, train_windows=0):
    """check_fits for make-batches --annotations: `windows` windows (of which `train_windows` get `noise`'s
    copies), their features spilled to the staging folder while they are extracted. Called with every
    window of the recordings before the plan (when all are kept), and with the plan's windows after it."""
    copies = noise.copies * int(train_windows) if noise is not None else 0
    check_fits(batch_dir, num_vis, dtype, windows, copies, f"--copies {noise.copies}" if noise is not None else None,
               flag=f"--window-hop {window_hop:g}" if window_hop is not None else None, spill=True,
               fix="give a larger --window-hop, a --background-ratio, fewer --copies, store --dtype float16 or "
                   "uint8, free some space, or choose another BATCH_DIR")


def check_clips_fit(batch_dir, plan, num_vis, dtype, noise):
    """check_fits for a set of clips planned as `plan`, with the noisy copies of its training clips."""
    n = sum(len(b) for b in plan.batches)
    copies = noise.copies * sum(len(b) for b in plan.batches[:plan.num_train]) if noise is not None else 0
    check_fits(batch_dir, num_vis, dtype, n, copies, f"--copies {noise.copies}" if noise is not None else None,
               fix="lower --copies, " * bool(copies) + "store --dtype float16 or uint8, free some space, or choose "
                   "another BATCH_DIR")


def make_batches(audio_dir, batch_dir, *, labels_csv=None, file_col=None, label_col=None, no_labels=False,
                 features: FeatureSpec = None, batch_size=1000, test_fraction=0.2, split_by=None, seed=0,
                 jobs=None, dtype="float32", overwrite=False, progress=True, label_names=None, noise=None) -> dict:
    """Write BATCH_DIR/data_batch_1..K, batches.meta and skipped.txt from the audio of AUDIO_DIR.

    Returns a summary dict: files, read, skipped, classes, batches, train_range, test_range, train_cases,
    test_cases, shape, batch_dir, seconds, timings {decode, resample, features, imports, write} (seconds;
    decode, resample, features and imports are summed over worker processes).

    noise: ingest/noise.py's NoiseOptions (--noise-dir, --copies, ...): noisy copies of the training clips.

    Long recordings with annotation tables take convnet_cli/ingest/recordings.py instead.
    """
    t_start = time.perf_counter()
    spec = features if features is not None else FeatureSpec()
    _check_options(batch_size, test_fraction, dtype, jobs, seed)
    batch_dir = os.fspath(batch_dir)
    if jobs is None:
        from convnet_cli.backend import default_threads

        jobs = default_threads()
    refuse_existing(batch_dir, overwrite)
    ds = collect_dataset(audio_dir, labels_csv, file_col, label_col, no_labels, label_names)
    groups = split_groups(ds.names, split_by) if split_by else None
    plan = plan_batches(ds.labels, int(batch_size), float(test_fraction), int(seed), groups)
    clips = len(ds)
    check_clips_fit(batch_dir, plan, int(np.prod(spec.shape)), dtype, noise)
    if noise is not None:
        ds, plan = with_copies(ds, plan, noise, int(batch_size), int(seed))

    with writing_set(batch_dir, overwrite) as staging:
        summary, files = _write_all(ds, plan, spec, staging, jobs, dtype, progress, noise)
        _install(staging, batch_dir, files)
    summary.update(batch_dir=batch_dir, files=clips, classes=len(ds.label_names),
                   label_names=list(ds.label_names), seconds=time.perf_counter() - t_start)
    return summary


@dataclass
class _Written:
    """What `_write_batches` wrote into the staging folder."""

    files: list = None       # batch file names, in order
    sizes: list = None       # cases per batch file
    n_train: int = 0         # the first n_train batch files form the training range
    skipped: list = None     # (file name, reason) of the audio that could not be read
    moments: "_Moments" = None  # statistics of the training batches, as a reader will see them
    timings: np.ndarray = None  # decode, resample, features, imports (summed over workers)
    t_write: float = 0.0
    copies: int = 0          # noisy copies written (ingest/noise.py), counted in sizes


def _write_all(ds, plan, spec, staging, jobs, dtype, progress, noise=None) -> tuple:
    """Write the batch files, skipped.txt and batches.meta into `staging`: (summary, names of the files)."""
    w = _write_batches(ds, plan, spec, staging, jobs, dtype, progress, noise)
    return finish_set(ds, spec, staging, w, dtype, noise)


def finish_set(ds, spec, staging, w, dtype, noise=None) -> tuple:
    """After the batch files of `w` are in `staging`: check them, write skipped.txt and batches.meta there;
    (summary, names of the files)."""
    _check_read(ds, w)
    train_range = [1, w.n_train] if w.n_train else []
    test_range = [w.n_train + 1, len(w.files)] if len(w.files) > w.n_train else []
    mean, std = w.moments.result()
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise DataError(f"{ds.audio_dir}: the training range's mean/std overflowed (features too large to sum); "
                        "nothing was written; check the --features settings and the loudest files")
    meta = {
        "label_names": list(ds.label_names),
        "num_vis": int(np.prod(spec.shape)),
        "data_shape": list(spec.shape),
        "num_cases_per_batch": max(w.sizes),
        "num_batches": len(w.files),
        "train_range": train_range,
        "test_range": test_range,
        "data_mean": mean,
        "data_std": std,
        "features": spec.to_dict(),
        "skipped": len(w.skipped),
        "batch_cases": w.sizes,
        "dtype": dtype,
    }
    if noise is not None:
        meta["copies"] = noise.meta()
    t0 = time.perf_counter()
    write_text_atomic(os.path.join(staging, SKIPPED), format_skipped(w.skipped))
    write_pickle_atomic(os.path.join(staging, META), meta)
    w.t_write += time.perf_counter() - t0
    summary = {
        "read": sum(w.sizes) - w.copies, "copies": w.copies, "skipped": len(w.skipped), "batches": len(w.files),
        "train_range": train_range, "test_range": test_range,
        "train_cases": int(sum(w.sizes[:w.n_train])), "test_cases": int(sum(w.sizes[w.n_train:])),
        "shape": tuple(spec.shape), "ignored": int(ds.extra.get("ignored_files", 0)),
        "outside_classes": int(ds.extra.get("ignored_loose_files", 0)),
        "timings": {"decode": float(w.timings[0]), "resample": float(w.timings[1]),
                    "features": float(w.timings[2]), "imports": float(w.timings[3]), "write": w.t_write},
    }
    return summary, w.files + [SKIPPED, META]


def _check_read(ds, w: _Written):
    """DataError when nothing, or nothing of the training range, could be read."""
    if sum(w.sizes) == 0:
        first = "; ".join(f"{n}: {r}" for n, r in w.skipped[:3])
        raise NothingReadError(f"{ds.audio_dir}: none of the {len(ds)} audio files could be read ({first}"
                               f"{' …' if len(w.skipped) > 3 else ''}); nothing was written")
    if w.moments.count == 0:
        raise DataError(f"{ds.audio_dir}: none of the clips planned for the training range could be read "
                        f"({len(w.skipped)} skipped); see the reasons with --jobs 1, or use --test-fraction 0")


def _write_batches(ds, plan, spec, staging, jobs, dtype, progress, noise=None) -> _Written:
    """Compute the features of the planned batches in chunks (in `jobs` processes) and write each batch file
    as soon as all its chunks are in; clips that cannot be read are skipped (a batch file may come out
    smaller, or not at all)."""
    num_vis = int(np.prod(spec.shape))
    chunks = []           # ((planned batch index, dataset indices), paths)
    for b, idx in enumerate(plan.batches):
        for a in range(0, len(idx), CHUNK):
            part = idx[a:a + CHUNK]
            chunks.append(((b, part), [ds.paths[i] for i in part]))
    remaining = [len(idx) for idx in plan.batches]
    # rows of the labels CSV refused before decoding (names outside AUDIO_DIR) are listed first
    w = _Written(files=[], sizes=[], skipped=list(ds.extra.get("skipped", [])), moments=_Moments(num_vis),
                 timings=np.zeros(4))
    parts = []
    with _progress(progress, len(ds)) as bar, closing(run_chunks(chunks, spec, jobs, noise=noise)) as results:
        for (b, part), chunk, (arr, ok, bad, times) in results:
            w.timings += times
            for j, reason in bad:
                # a copy of a clip that cannot be decoded repeats the clip's own entry: named once
                if isinstance(ds.paths[part[j]], str) or reason.startswith("noisy copy"):
                    w.skipped.append((ds.names[part[j]], reason))
            if arr is not None:
                parts.append((arr, [part[j] for j in ok]))
            remaining[b] -= len(chunk)
            bar.update(len(chunk))
            if remaining[b] or not parts:
                continue
            # batch b complete
            t0 = time.perf_counter()
            _write_batch(ds, parts, num_vis, dtype, staging, w, is_train=b < plan.num_train)  # empties parts
            w.t_write += time.perf_counter() - t0
    return w


def _write_batch(ds, parts, num_vis, dtype, staging, w: _Written, is_train: bool):
    """One batch file from its chunks' features `parts` [(features, dataset indices)], which it empties;
    updates `w`."""
    feats = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    index = [i for p in parts for i in p[1]]
    parts.clear()  # the caller's list: the chunks' arrays are freed before the batch is encoded
    cols = feats.reshape(feats.shape[0], num_vis).T          # (num_vis, n): one case per column
    del feats
    batch, seen = encode_batch(cols, ds.labels[index], [ds.names[i] for i in index], dtype)
    name = f"data_batch_{len(w.files) + 1}"
    write_pickle_atomic(os.path.join(staging, name), batch)
    w.files.append(name)
    w.sizes.append(len(index))
    w.copies += sum(1 for i in index if not isinstance(ds.paths[i], str))
    if is_train:
        w.moments.add(seen)
        w.n_train = len(w.files)


def _install(staging, batch_dir, files):
    """Replace the set in batch_dir by the staged `files`, atomically as a set (data/batch_set_swap.py)."""
    install_set(staging, batch_dir, files)


def refuse_existing(batch_dir, overwrite, completed=None):
    """DataError when BATCH_DIR is a file, or holds batch files and `overwrite` is not given.

    A set a killed make-batches left half moved into place is finished first (README: the next make-batches
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
