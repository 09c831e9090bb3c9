"""Audio folders -> cuda-convnet batch files: the clip source of make-batches (the audio layouts: README.md,
'From a folder of audio to a CSV'; the batch set itself is written by data/writer.py).

The plan is made before any audio is decoded: clips are split into train and test (stratified by class, or
by `--split-by` group), shuffled with `--seed`, and dealt class by class round-robin into K batches so every
batch holds every class where possible (data/writer.py's `deal`). Then batch after batch is decoded (in
`--jobs` processes), turned into features and handed to the writer, so memory holds about one batch
whatever the size of the set.

Test range: the last ceil(F * K) of the K = ceil(n / batch_size) batches (at least one batch each side
when F > 0 and there are two clips or more); the clips are dealt evenly, so no batch exceeds batch_size.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from convnet_cli.data.batch_set_swap import install_set
from convnet_cli.data.writer import (Batch, NothingReadError, SetWriter, check_fits, check_set_options,
                                     deal, plan_copies, refuse_existing, writing_set)
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.ingest.audio import (CHANNEL_ALL, CHANNEL_MIX, AudioError, channel_streams, check_time_expansion,
                                     fit_length, parse_channel, read_audio, resample, stream_name)
from convnet_cli.ingest.features import FeatureSpec, compute_features
from convnet_cli.ingest.noise import copy_name, make_copy
from convnet_cli.ingest.sources import collect_dataset
from convnet_cli.ingest.workers import import_once, ordered_map
from convnet_cli.progress import Progress

CHUNK = 32          # clips per task handed to a worker process


# ---- the worker (module level so 'spawn' / 'forkserver' processes can import it) ------------------

def extract_chunk(paths, spec_dict, compute=True, noise=None, channels=None, time_expansion=1.0):
    """Decode, resample, crop/pad and (when `compute`) featurize `paths` on the host.

    An entry of `paths` may be (path, case, copy): then the clip is copy `copy` of case `case`, made by
    ingest/noise.py's make_copy with the NoiseOptions `noise`. channels: the channel (1-based) read of each
    entry, None for the channels mixed (default: every entry mixed); time_expansion: read_audio's.

    Returns (array or None, ok positions, [(position, reason)], (decode s, resample s, features s, imports s)).
    The array is (m, 1, H, W) float32 features, or (m, samples) float32 clips when not `compute`.
    The first call in a process imports soundfile / scipy; that time is counted apart ("imports").
    """
    t_import = import_once("soundfile", "scipy.fft")
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
            x, sr = read_audio(path, crop_to=(spec.sample_rate, n), channel=None if channels is None else channels[j],
                               time_expansion=time_expansion)
        except AudioError as exc:
            skipped.append((j, exc.reason))
            t_decode += time.perf_counter() - t0
            continue
        t_decode += time.perf_counter() - t0
        if sr != spec.sample_rate:
            t_import += import_once("scipy.signal")
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


def run_chunks(chunks, spec: FeatureSpec, jobs: int, compute=True, noise=None, time_expansion=1.0):
    """chunks: [(key, paths)] or [(key, paths, channels)] (extract_chunk's) -> yield (key, paths, extract_chunk
    result) in order, in `jobs` processes (ingest/workers.py: bounded memory, results consumed in order)."""
    spec_dict = spec.to_dict()

    def died(item):
        paths = item[1][0]
        return (f"a worker process died while reading one of {paths[0]} … {paths[-1]} (out of memory, or a file "
                "that crashes the decoder); run with --jobs 1 to find out which")

    items = [(c[0], (c[1], spec_dict, compute, noise, c[2] if len(c) > 2 else None, time_expansion)) for c in chunks]
    for (key, args), res in ordered_map(extract_chunk, items, jobs, died=died):
        yield key, args[0], res


def features_for_files(paths, spec: FeatureSpec, jobs=1, backend=None, channels=None, time_expansion=1.0,
                       positions=False):
    """Features of audio files as make-batches computes them (for `convnet predict` on raw audio).

    Returns (array (n, 1, H, W) float32, ok_paths, skipped [(path, reason)]); with `positions`, the files'
    positions in `paths` instead of their paths (a file read for two channels is there twice). The array is a host numpy
    array, or a device array when `backend` is a GPU backend (decoding stays on the host; the features
    are computed on the GPU). channels: the channel read of each file (1-based; None: mixed), as
    extract_chunk's; time_expansion: read_audio's.
    """
    paths = [os.fspath(p) for p in paths]
    on_gpu = backend is not None and getattr(backend, "is_gpu", False)
    chunks = [(a, paths[a:a + CHUNK], None if channels is None else list(channels[a:a + CHUNK]))
              for a in range(0, len(paths), CHUNK)]
    parts, ok_at, skipped = [], [], []
    for a, chunk, (arr, ok, bad, _) in run_chunks(chunks, spec, jobs or 1, compute=not on_gpu,
                                                  time_expansion=time_expansion):
        if arr is not None:
            parts.append(compute_features(backend.asarray(arr), spec, backend.xp) if on_gpu else arr)
        ok_at.extend(a + j if positions else chunk[j] for j in ok)
        skipped.extend((a + j if positions else chunk[j], reason) for j, reason in bad)
    xp = backend.xp if on_gpu else np
    if parts:
        out = xp.concatenate(parts) if len(parts) > 1 else parts[0]
    else:
        out = xp.zeros((0,) + spec.shape, dtype=xp.float32)
    return out, ok_at, skipped


def file_streams(path: str, channel) -> list:
    """The streams of one audio file under --channel `channel` (audio.py's channel_streams): [None] for
    'mix'; for N or 'all' the file's header is read (a file that cannot be read is one stream, [1] or [N],
    which its reader then skips with the reason)."""
    if channel in (None, CHANNEL_MIX):
        return [None]
    import soundfile as sf

    try:
        channels = int(sf.info(path).channels)
    except Exception:  # noqa: BLE001 - any unreadable file: the reader says why, and skips it
        return [1 if channel == CHANNEL_ALL else int(channel)]
    return channel_streams(path, channel, channels)


def channel_dataset(ds, channel):
    """The Dataset (sources.py) under --channel `channel`: unchanged for 'mix'; for N every clip read from its
    channel N (ChannelError, exit 2, for a file with fewer); for 'all' each channel of a clip a case of its
    own, named '<name>#ch<k>', with the clip's label. `channels` of the result: each case's channel."""
    channel = parse_channel(channel)
    if channel == CHANNEL_MIX:
        return ds
    paths, names, src, chans = [], [], [], []
    for i, (p, name) in enumerate(zip(ds.paths, ds.names)):
        for ch in file_streams(p, channel):
            paths.append(p)
            names.append(stream_name(name, ch) if channel == CHANNEL_ALL else name)
            src.append(i)
            chans.append(ch)
    src = np.asarray(src, dtype=np.int64)
    multi = None if ds.multi is None else ds.multi.take(src)
    extra = dict(ds.extra, files=list(ds.names), file_of=src)
    return dataclasses.replace(ds, paths=paths, names=names, labels=ds.labels[src], multi=multi, channels=chans,
                               extra=extra)


def split_keys(ds, split_by):
    """The groups of the split: --split-by's on the case names, else (the channels of one file as cases of
    their own) each case's file, so a file's channels stay on one side; None: no groups."""
    if split_by:
        return split_groups(ds.names, split_by)
    if "file_of" in ds.extra:
        files = ds.extra["files"]
        return [files[i] for i in ds.extra["file_of"]]
    return None


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
    train_batches = deal(train_idx, labels, k - k_test, rng)
    test_batches = deal(test_idx, labels, k_test, rng)
    return Plan(train_batches + test_batches, len(train_batches))


def with_copies(ds, plan: Plan, noise, batch_size: int, seed: int):
    """(dataset, plan) with `noise.copies` copies of every training clip added (ingest/noise.py), placed by
    data/writer.py's plan_copies: a copy's path entry is (path, case, copy) and its name the clip's marked
    with the copy; the training clips and their copies are dealt anew into ceil(n / batch_size) batches, the
    test batches stay as planned."""
    n = len(ds)
    train_idx = np.sort(np.concatenate(plan.batches[:plan.num_train])) if plan.num_train else np.zeros(0, np.int64)
    pairs = [(i, copy) for copy in range(1, noise.copies + 1) for i in train_idx.tolist()]
    cp = plan_copies(n, train_idx, pairs, ds.targets.labels, batch_size, np.random.default_rng([int(seed), 1]))
    paths = list(ds.paths) + [(ds.paths[i], i, k) for i, k in pairs]       # the copies are cases n, n+1, ...
    names = list(ds.names) + [copy_name(ds.names[i], k) for i, k in pairs]
    chans = None if ds.channels is None else list(ds.channels) + [ds.channels[i] for i, _ in pairs]
    multi = None if ds.multi is None else ds.multi.take(cp.source)
    big = dataclasses.replace(ds, paths=paths, names=names, labels=ds.labels[cp.source], multi=multi, channels=chans)
    return big, Plan(cp.train_batches + list(plan.batches[plan.num_train:]), len(cp.train_batches))


# ---- will it fit: the set's size against the free space of BATCH_DIR's file system ---------------

def check_clips_fit(batch_dir, plan, num_vis, dtype, noise):
    """check_fits for a set of clips planned as `plan`, with the noisy copies of its training clips."""
    n = sum(len(b) for b in plan.batches)
    copies = noise.copies * sum(len(b) for b in plan.batches[:plan.num_train]) if noise is not None else 0
    check_fits(batch_dir, num_vis, dtype, n, copies, f"--copies {noise.copies}" if noise is not None else None,
               fix="lower --copies, " * bool(copies) + "store --dtype float16 or uint8, free some space, or choose "
                   "another BATCH_DIR")


@dataclass
class SetOptions:
    """What every make-batches set takes, of clips (ClipOptions) or of annotated recordings
    (recordings.AnnotationOptions): the classes, the channels and time expansion, the batches and the split."""

    label_col: str | None = None
    label_names: list | None = None
    multi_label: bool = False             # every case a set of classes (SPEC 17)
    channel: object = CHANNEL_MIX         # --channel: 'mix', 'all' or N (1-based)
    time_expansion: float = 1.0           # --time-expansion: the true rate is the header's times this
    batch_size: int = 1000
    test_fraction: float = 0.2
    split_by: str | None = None
    seed: int = 0
    jobs: int | None = None
    dtype: str = "float32"
    overwrite: bool = False
    progress: bool = True

    @classmethod
    def of(cls, options, kw):
        """`options` with the keywords `kw` over it (TypeError naming an unknown one, as a signature would)."""
        unknown = [k for k in kw if k not in {f.name for f in dataclasses.fields(cls)}]
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown option {unknown[0]!r}")
        return dataclasses.replace(options, **kw) if options is not None else cls(**kw)

    def checked_set(self) -> tuple:
        """(channel, time expansion) once the settings every set takes are checked: the one-line errors of a
        bad --batch-size, --test-fraction, --dtype, --jobs, --seed, --channel or --time-expansion."""
        check_set_options(self.batch_size, self.test_fraction, self.dtype, self.jobs, self.seed)
        return parse_channel(self.channel), check_time_expansion(self.time_expansion)


@dataclass
class ClipOptions(SetOptions):
    """make-batches' settings for a folder of clips (the flags of `convnet make-batches` without
    --annotations), for make_batches and make_batches_sharded alike.

    noise: ingest/noise.py's NoiseOptions (--noise-dir, --copies, ...): noisy copies of the training clips.
    multi_label: every clip a set of classes (sources.py's collect_dataset), batch files with `targets`."""

    labels_csv: str | None = None
    file_col: str | None = None
    no_labels: bool = False
    features: FeatureSpec | None = None
    noise: object = None

    def checked(self, processes_per_node: int = 1) -> tuple:
        """(features, channel, time expansion, jobs) once the settings are checked; jobs default to the
        usable cores, shared by the processes of a node."""
        spec = new_set_features(self.features)
        channel, time_expansion = self.checked_set()
        jobs = self.jobs
        if jobs is None:
            from convnet_cli.backend import default_threads

            jobs = max(1, default_threads() // max(1, processes_per_node))
        return spec, channel, time_expansion, jobs


def make_batches(audio_dir, batch_dir, *, options: ClipOptions | None = None, **kw) -> dict:
    """Write BATCH_DIR/data_batch_1..K, batches.meta and skipped.txt from the audio of AUDIO_DIR.

    options: a ClipOptions, or its fields as keywords (labels_csv=, features=, batch_size=, ...).
    Returns a summary dict: files, read, skipped, classes, batches, train_range, test_range, train_cases,
    test_cases, shape, batch_dir, seconds, timings {decode, resample, features, imports, write} (seconds;
    decode, resample, features and imports are summed over worker processes).

    Long recordings with annotation tables take convnet_cli/ingest/recordings.py instead.
    """
    t_start = time.perf_counter()
    o = ClipOptions.of(options, kw)
    spec, channel, time_expansion, jobs = o.checked()
    batch_dir = os.fspath(batch_dir)
    refuse_existing(batch_dir, o.overwrite)
    ds = collect_dataset(audio_dir, o.labels_csv, o.file_col, o.label_col, o.no_labels, o.label_names, o.multi_label)
    ds = channel_dataset(ds, channel)
    groups = split_keys(ds, o.split_by)
    plan = plan_batches(ds.targets.labels, int(o.batch_size), float(o.test_fraction), int(o.seed), groups)
    clips = len(ds)
    check_clips_fit(batch_dir, plan, int(np.prod(spec.shape)), o.dtype, o.noise)
    if o.noise is not None:
        ds, plan = with_copies(ds, plan, o.noise, int(o.batch_size), int(o.seed))

    with writing_set(batch_dir, o.overwrite) as staging:
        writer = SetWriter(staging, int(np.prod(spec.shape)), o.dtype, type(ds.targets))
        source = ClipSource(ds, plan, spec, jobs, o.progress, o.noise, time_expansion)
        writer.write_all(batch for _, batch in source)
        files = finish_clips(ds, spec, writer, source.skipped, o.noise)
        install_set(staging, batch_dir, files)
    summary = clip_summary(ds, spec, writer, source.skipped, source.timings)
    summary.update(batch_dir=batch_dir, files=len(ds.extra.get("files", ())) or clips, classes=len(ds.label_names),
                   label_names=list(ds.label_names), seconds=time.perf_counter() - t_start)
    return summary


def new_set_features(features) -> FeatureSpec:
    """The features of a new batch set: `features` (default FeatureSpec()), with `normalize` set to `band` when
    the caller chose none (the default for audio batch folders made from now on; docs/CONFIG.md)."""
    spec = features if features is not None else FeatureSpec()
    return spec if spec.normalize else spec.replace(normalize="band")


def case_targets(ds, index):
    """The Targets (data/targets.py) of the dataset's cases `index`."""
    return ds.targets.take(np.asarray(index, dtype=np.int64))


class ClipSource:
    """The planned batches of a dataset's clips, as a source for data/writer.py's SetWriter: iterating
    computes the features in chunks (in `jobs` processes) and yields (planned batch index, a writer Batch)
    for each batch as soon as all its chunks are in. `only`: the planned batches to make (an MPI rank's
    share, ingest/sharded.py), default all. Clips that cannot be read are skipped (a batch may come out
    smaller, or not at all): `skipped_in` {batch: [(name, reason)]}, `skipped` (all of them, the labels CSV's
    refused rows first) and `timings` (4,: decode, resample, features, imports summed over the workers) are
    complete once the iteration is."""

    def __init__(self, ds, plan, spec, jobs, progress, noise=None, time_expansion=1.0, only=None):
        self.ds, self.plan, self.spec, self.jobs, self.progress = ds, plan, spec, jobs, progress
        self.noise, self.time_expansion = noise, time_expansion
        self.only = list(range(len(plan.batches))) if only is None else list(only)
        self.skipped_in = {b: [] for b in self.only}
        self.timings = np.zeros(4)

    @property
    def skipped(self) -> list:
        # rows of the labels CSV refused before decoding (names outside AUDIO_DIR) are listed first
        return list(self.ds.extra.get("skipped", [])) + [x for b in self.only for x in self.skipped_in[b]]

    def __iter__(self):
        ds, plan = self.ds, self.plan
        num_vis = int(np.prod(self.spec.shape))
        chunks = []           # ((planned batch index, dataset indices), paths, channels)
        for b in self.only:
            idx = plan.batches[b]
            for a in range(0, len(idx), CHUNK):
                part = idx[a:a + CHUNK]
                chunks.append(chunk_of(ds, (b, part), part))
        remaining = {b: len(plan.batches[b]) for b in self.only}
        parts = []            # the chunks read of the batch being assembled (chunks come in order)
        with Progress("make-batches", sum(remaining.values()), "clips", enabled=self.progress) as bar, \
                closing(run_chunks(chunks, self.spec, self.jobs, noise=self.noise,
                                   time_expansion=self.time_expansion)) as results:
            for (b, part), chunk, (arr, ok, bad, times) in results:
                self.timings += times
                self.skipped_in[b].extend(chunk_skipped(ds, part, bad))
                if arr is not None:
                    parts.append((arr, [part[j] for j in ok]))
                remaining[b] -= len(chunk)
                bar.add(len(chunk))
                if remaining[b] or not parts:
                    continue
                cols, index = batch_columns(parts, num_vis)        # empties parts
                yield b, Batch(cols, case_targets(ds, index), [ds.names[i] for i in index], b < plan.num_train,
                               copies=sum(1 for i in index if not isinstance(ds.paths[i], str)))


def chunk_of(ds, key, part) -> tuple:
    """run_chunks's (key, paths, channels) for the dataset's cases `part`."""
    return key, [ds.paths[i] for i in part], None if ds.channels is None else [ds.channels[i] for i in part]


def chunk_skipped(ds, part, bad) -> list:
    """(name, reason) of the clips of a chunk that could not be read; a copy of a clip that cannot be decoded
    repeats the clip's own entry: named once."""
    return [(ds.names[part[j]], reason) for j, reason in bad
            if isinstance(ds.paths[part[j]], str) or reason.startswith("noisy copy")]


def batch_columns(parts, num_vis) -> tuple:
    """(cols (num_vis, n), dataset indices) of one batch from its chunks' `parts` [(features, indices)], which
    it empties (the chunks' arrays are freed before the batch is encoded)."""
    feats = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    index = [i for p in parts for i in p[1]]
    parts.clear()
    return feats.reshape(feats.shape[0], num_vis).T, index


def finish_clips(ds, spec, writer: SetWriter, skipped, noise=None) -> list:
    """Check that something (of the training range) was read; skipped.txt and batches.meta; the set's files."""
    if sum(writer.sizes) == 0:
        first = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
        raise NothingReadError(f"{ds.audio_dir}: none of the {len(ds)} audio files could be read ({first}"
                               f"{' …' if len(skipped) > 3 else ''}); nothing was written")
    if writer.moments.count == 0:
        raise DataError(f"{ds.audio_dir}: none of the clips planned for the training range could be read "
                        f"({len(skipped)} skipped); see the reasons with --jobs 1, or use --test-fraction 0")
    extra = {"copies": noise.meta()} if noise is not None else {}
    return writer.finish(ds.label_names, spec, skipped, ds.audio_dir, extra)


def clip_summary(ds, spec, writer: SetWriter, skipped, timings) -> dict:
    return {
        "read": sum(writer.sizes) - writer.copies, "copies": writer.copies, "skipped": len(skipped),
        "batches": len(writer.files), "train_range": writer.train_range, "test_range": writer.test_range,
        "train_cases": writer.train_cases, "test_cases": writer.test_cases,
        "shape": tuple(spec.shape), "ignored": int(ds.extra.get("ignored_files", 0)),
        "outside_classes": int(ds.extra.get("ignored_loose_files", 0)),
        "timings": {"decode": float(timings[0]), "resample": float(timings[1]),
                    "features": float(timings[2]), "imports": float(timings[3]), "write": writer.t_write},
    }
