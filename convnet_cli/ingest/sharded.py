"""`make-batches` over K processes (`mpiexec -n K convnet make-batches ...`): the same batch files as one
process, decoded K ways.

Rank 0 lists the clips and broadcasts the list; every rank makes the same plan (ingest/make_batches.py:
plan_batches, seeded). Planned batch b is decoded and encoded by rank b mod K (in its own `--jobs` worker
processes: by default the node's cores shared among the ranks on it), written into the staging folder
that rank 0 made inside BATCH_DIR (so BATCH_DIR must be on a file system every rank sees) under a
temporary name, and its training statistics (count, mean, M2 per feature) are sent to rank 0. Rank 0 then
names the files in plan order (a batch with no readable clip gets no file, as with one process), merges
the statistics in that order with the same float64 arithmetic, writes skipped.txt and batches.meta, and
installs the set. So batch files, batches.meta and skipped.txt equal those of one process.
"""
from __future__ import annotations

import contextlib
import os
import time
from contextlib import closing

import numpy as np

from convnet_cli.data.batch_files import encode_batch
from convnet_cli.fileio import write_pickle_atomic
from convnet_cli.ingest.features import FeatureSpec
from convnet_cli.ingest.make_batches import (CHUNK, _check_options, _install, _Moments, _progress, _Written,
                                             check_clips_fit, finish_set, plan_batches, refuse_existing, run_chunks,
                                             split_groups, with_copies, writing_set)
from convnet_cli.ingest.sources import collect_dataset
from convnet_cli.parallel import on_root


def make_batches_sharded(world, audio_dir, batch_dir, *, labels_csv=None, file_col=None, label_col=None,
                         no_labels=False, features: FeatureSpec = None, batch_size=1000, test_fraction=0.2,
                         split_by=None, seed=0, jobs=None, dtype="float32", overwrite=False, progress=True,
                         label_names=None, noise=None) -> dict:
    """make_batches (ingest/make_batches.py) split over the ranks of `world`; every rank returns the summary."""
    t_start = time.perf_counter()
    spec = features if features is not None else FeatureSpec()
    _check_options(batch_size, test_fraction, dtype, jobs, seed)
    batch_dir = os.fspath(batch_dir)
    if jobs is None:
        from convnet_cli.backend import default_threads

        jobs = max(1, default_threads() // max(1, getattr(world, "local_size", 1)))

    def listing():  # the checks and the listing once, on rank 0; the others get the result
        refuse_existing(batch_dir, overwrite)
        return collect_dataset(audio_dir, labels_csv, file_col, label_col, no_labels, label_names)

    ds = on_root(world, listing)
    groups = split_groups(ds.names, split_by) if split_by else None
    plan = plan_batches(ds.labels, int(batch_size), float(test_fraction), int(seed), groups)
    clips = len(ds)
    on_root(world, lambda: check_clips_fit(batch_dir, plan, int(np.prod(spec.shape)), dtype, noise))
    if noise is not None:
        ds, plan = with_copies(ds, plan, noise, int(batch_size), int(seed))
    with contextlib.ExitStack() as rank0:
        # rank 0 holds the set's staging folder and the folder's lock; every rank gets the staging folder
        staging = on_root(world, lambda: rank0.enter_context(writing_set(batch_dir, overwrite)))
        try:
            mine = _decode_share(world, ds, plan, spec, staging, jobs, dtype, progress, noise)
        except Exception as exc:  # noqa: BLE001 - rank 0 raises the first rank's error for all
            mine = exc
        results = world.gather(mine)

        def assemble():
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                raise errors[0]
            summary, files = _assemble(ds, plan, spec, staging, dtype, results, noise)
            _install(staging, batch_dir, files)
            summary.update(batch_dir=batch_dir, files=clips, classes=len(ds.label_names),
                           label_names=list(ds.label_names), seconds=time.perf_counter() - t_start,
                           processes=world.size)
            return summary

        return on_root(world, assemble)


def _decode_share(world, ds, plan, spec, staging, jobs, dtype, progress, noise=None) -> dict:
    """Decode and write the planned batches b with b mod K == rank as staging/part_<b>.

    Returns {"batches": {b: (cases, skipped [(name, reason)], train stats or None, noisy copies)},
    "timings": (4,)}."""
    num_vis = int(np.prod(spec.shape))
    mine = [b for b in range(len(plan.batches)) if b % world.size == world.rank]
    chunks = []
    for b in mine:
        idx = plan.batches[b]
        for a in range(0, len(idx), CHUNK):
            part = idx[a:a + CHUNK]
            chunks.append(((b, part), [ds.paths[i] for i in part]))
    remaining = {b: len(plan.batches[b]) for b in mine}
    out = {b: [0, [], None, 0] for b in mine}
    parts = {b: [] for b in mine}
    timings = np.zeros(4)
    length = sum(remaining.values())
    with _progress(progress and world.is_root, length) as bar, \
            closing(run_chunks(chunks, spec, jobs, noise=noise)) as results:
        for (b, part), chunk, (arr, ok, bad, times) in results:
            timings += times
            # a copy of a clip that cannot be decoded repeats the clip's own entry: named once
            out[b][1].extend((ds.names[part[j]], reason) for j, reason in bad
                             if isinstance(ds.paths[part[j]], str) or reason.startswith("noisy copy"))
            if arr is not None:
                parts[b].append((arr, [part[j] for j in ok]))
            remaining[b] -= len(chunk)
            bar.update(len(chunk))
            if remaining[b] or not parts[b]:
                continue
            feats = np.concatenate([p[0] for p in parts[b]]) if len(parts[b]) > 1 else parts[b][0][0]
            index = [i for p in parts[b] for i in p[1]]
            parts[b] = []
            cols = feats.reshape(feats.shape[0], num_vis).T
            del feats
            batch, seen = encode_batch(cols, ds.labels[index], [ds.names[i] for i in index], dtype)
            write_pickle_atomic(os.path.join(staging, f"part_{b}"), batch)
            out[b][0] = len(index)
            out[b][3] = sum(1 for i in index if not isinstance(ds.paths[i], str))
            if b < plan.num_train:
                out[b][2] = _Moments.batch_stats(seen)
    return {"batches": {b: tuple(v) for b, v in out.items()}, "timings": timings}


def _assemble(ds, plan, spec, staging, dtype, results, noise=None) -> tuple:
    """Rank 0: name the parts data_batch_1.. in plan order, merge the statistics in that order, then write
    skipped.txt and batches.meta as one process does."""
    by_batch = {}
    timings = np.zeros(4)
    for r in results:
        by_batch.update(r["batches"])
        timings += r["timings"]
    num_vis = int(np.prod(spec.shape))
    # rows of the labels CSV refused before decoding are listed first, as with one process
    w = _Written(files=[], sizes=[], skipped=list(ds.extra.get("skipped", [])), moments=_Moments(num_vis),
                 timings=timings)
    t0 = time.perf_counter()
    for b in range(len(plan.batches)):
        cases, skipped, stats, copies = by_batch[b]
        w.skipped.extend(skipped)
        if not cases:
            continue
        name = f"data_batch_{len(w.files) + 1}"
        os.replace(os.path.join(staging, f"part_{b}"), os.path.join(staging, name))
        w.files.append(name)
        w.sizes.append(cases)
        w.copies += copies
        if b < plan.num_train:
            w.moments.merge(*stats)
            w.n_train = len(w.files)
    w.t_write += time.perf_counter() - t0
    return finish_set(ds, spec, staging, w, dtype, noise)
