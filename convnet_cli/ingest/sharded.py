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

import numpy as np

from convnet_cli.data.batch_set_swap import install_set
from convnet_cli.data.writer import SetWriter, refuse_existing, writing_set
from convnet_cli.ingest.make_batches import (ClipOptions, ClipSource, channel_dataset, check_clips_fit, clip_summary,
                                             finish_clips, plan_batches, split_keys, with_copies)
from convnet_cli.ingest.sources import collect_dataset
from convnet_cli.parallel import on_root


def make_batches_sharded(world, audio_dir, batch_dir, *, options: ClipOptions | None = None, **kw) -> dict:
    """make_batches (ingest/make_batches.py) split over the ranks of `world`; every rank returns the summary.
    options: a ClipOptions, or its fields as keywords."""
    t_start = time.perf_counter()
    o = ClipOptions.of(options, kw)
    spec, channel, time_expansion, jobs = o.checked(getattr(world, "local_size", 1))
    batch_dir = os.fspath(batch_dir)

    def listing():  # the checks and the listing once, on rank 0; the others get the result
        refuse_existing(batch_dir, o.overwrite)
        return channel_dataset(collect_dataset(audio_dir, o.labels_csv, o.file_col, o.label_col, o.no_labels,
                                               o.label_names, o.multi_label), channel)

    ds = on_root(world, listing)
    groups = split_keys(ds, o.split_by)
    plan = plan_batches(ds.targets.labels, int(o.batch_size), float(o.test_fraction), int(o.seed), groups)
    clips = len(ds)
    on_root(world, lambda: check_clips_fit(batch_dir, plan, int(np.prod(spec.shape)), o.dtype, o.noise))
    if o.noise is not None:
        ds, plan = with_copies(ds, plan, o.noise, int(o.batch_size), int(o.seed))
    with contextlib.ExitStack() as rank0:
        # rank 0 holds the set's staging folder and the folder's lock; every rank gets the staging folder
        staging = on_root(world, lambda: rank0.enter_context(writing_set(batch_dir, o.overwrite)))
        try:
            mine = _decode_share(world, ds, plan, spec, staging, jobs, o.dtype, o.progress, o.noise, time_expansion)
        except Exception as exc:  # noqa: BLE001 - rank 0 raises the first rank's error for all
            mine = exc
        results = world.gather(mine)

        def assemble():
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                raise errors[0]
            writer, skipped, timings = _assemble(ds, plan, spec, staging, o.dtype, results)
            files = finish_clips(ds, spec, writer, skipped, o.noise)
            install_set(staging, batch_dir, files)
            summary = clip_summary(ds, spec, writer, skipped, timings)
            summary.update(batch_dir=batch_dir, files=clips, classes=len(ds.label_names),
                           label_names=list(ds.label_names), seconds=time.perf_counter() - t_start,
                           processes=world.size)
            return summary

        return on_root(world, assemble)


def _decode_share(world, ds, plan, spec, staging, jobs, dtype, progress, noise=None, time_expansion=1.0) -> dict:
    """Decode and write the planned batches b with b mod K == rank as staging/part_<b> (make_batches.py's
    ClipSource over this rank's share).

    Returns {"batches": {b: (cases, skipped [(name, reason)], train stats or None, noisy copies)},
    "timings": (4,)}."""
    mine = [b for b in range(len(plan.batches)) if b % world.size == world.rank]
    source = ClipSource(ds, plan, spec, jobs, progress and world.is_root, noise, time_expansion, only=mine)
    written = {}
    for b, batch in source:
        written[b] = (len(batch.names), SetWriter.write_part(staging, f"part_{b}", batch.cols, batch.targets,
                                                             batch.names, dtype, batch.is_train), batch.copies)
    out = {}
    for b in mine:   # a batch none of whose clips could be read: no part, its skipped clips only
        cases, stats, copies = written.get(b, (0, None, 0))
        out[b] = (cases, source.skipped_in[b], stats, copies)
    return {"batches": out, "timings": source.timings}


def _assemble(ds, plan, spec, staging, dtype, results) -> tuple:
    """Rank 0: name the parts data_batch_1.. in plan order, merging the statistics in that order with the same
    arithmetic as one process: (writer, skipped, timings)."""
    by_batch = {}
    timings = np.zeros(4)
    for r in results:
        by_batch.update(r["batches"])
        timings += r["timings"]
    writer = SetWriter(staging, int(np.prod(spec.shape)), dtype, type(ds.targets))
    # rows of the labels CSV refused before decoding (names outside AUDIO_DIR), as one process lists them
    skipped = list(ds.extra.get("skipped", []))
    for b in range(len(plan.batches)):
        cases, bad, stats, copies = by_batch[b]
        skipped.extend(bad)
        if cases:
            writer.adopt(f"part_{b}", cases, stats, b < plan.num_train, copies)
    return writer, skipped, timings
