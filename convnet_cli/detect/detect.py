"""`convnet detect`: a trained net slides over recordings of any length and writes what it finds (docs/CONFIG.md).

recordings -> windows (convnet_cli/ingest/windows.py: blocks, features by the make-batches code) -> the net
in forward passes of `batch` windows (normalised with the checkpoint's mean/std, by predict's runner) ->
events per class (events.py) -> Raven tables and CSVs (raven.py).

OUT_DIR bookkeeping, so that a 100,000-file job survives a crash or a Ctrl-C:
- each recording's table is written atomically when the recording is finished, then a line
  {path, size, mtime, name, table, duration, windows, detections} is appended to `done.jsonl` (fsynced);
  `--resume` skips recordings whose line still matches their size and mtime and redoes the others;
- `detect.json` holds the settings (checkpoint, hop, thresholds, classes, merge gap, split dip, event cap,
  channel, time expansion); a resume with other settings is refused, since its tables would not agree with
  the earlier ones, and so is one whose detect.json is missing or unreadable while a journal is there;
- every done.jsonl line is checked (field types; `table` and `scores` name files inside OUT_DIR, no
  symlink out of it): a bad line is a one-line error naming the journal and the line;
- OUT_DIR's files are detect's own only when a detect.json or a journal is there: then detect.json, the
  journals, detections.csv, scores.csv, skipped.txt, detections.selections.txt, .scores/ and the tables the
  journals name. `--overwrite` removes only those; other files (a user's Raven tables) stay, and a new
  table never takes the name of one;
- `.detect.lock` (convnet_cli.data.batch_set_swap.BatchDirLock): one detect at a time per OUT_DIR;
- `detections.csv`, `scores.csv` and the combined table cover every recording done so far and are
  rewritten (atomically) at the end, and also after a Ctrl-C; per-window scores of each recording wait in
  `.scores/` until then;
- `skipped.txt`: the recordings of this run that could not be read, with the reason.

Under `mpiexec -n K` (convnet_cli/parallel.py's world) the recordings to do are dealt to the processes,
longest first to the least loaded; each writes its recordings' tables and journals them in its own
`done.<rank>.jsonl` (two processes never append to one file, which network file systems do not make safe);
at the end rank 0 moves their lines into done.jsonl and writes detections.csv, scores.csv and the combined
table over all recordings. A resume reads the per-process journals an interrupted run left, under any K.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field, fields, replace

import numpy as np

from convnet_cli.data.batch_set_swap import BatchDirLock
from convnet_cli.data.skipped_list import format_skipped
from convnet_cli.fileio import make_out_dir, special_file, write_text_atomic
from convnet_cli.detect import raven
from convnet_cli.detect.events import (DEFAULT_SPLIT_DIP, check_class_names, reported_classes,
                                       windows_to_events)
from convnet_cli.errors import ConfigError, ConvnetError, DataError
from convnet_cli.parallel import SingleWorld, on_root, rank_device
from convnet_cli.progress import AudioProgress
from convnet_cli.thresholds import parse_thresholds

DONE = "done.jsonl"
DONE_PART = "done.{rank}.jsonl"   # a process's own journal under MPI, merged into done.jsonl at the end
SETTINGS = "detect.json"
SKIPPED = "skipped.txt"
SCORES_DIR = ".scores"
LOCK = ".detect.lock"
# the files a run writes at its end under fixed names (detect.json's `outputs` lists those it wrote)
FIXED_OUTPUTS = (SKIPPED, raven.DETECTIONS_CSV, raven.SCORES_CSV, raven.COMBINED_NAME)
# detect's files by their fixed names (the tables are named in the journal)
OWN_NAMES = (DONE, SETTINGS) + FIXED_OUTPUTS + (SCORES_DIR,)
# settings that change what a table holds: a resume must keep them
_FIXED = ("checkpoint", "checkpoint_mtime", "hop", "duration", "thresholds", "classes", "merge_gap", "split_dip",
          "max_event", "channel", "time_expansion")
# settings an older detect.json lacks, with the value that older detect used
_ADDED_LATER = {"split_dip": 0.0, "max_event": None, "channel": "mix", "time_expansion": 1.0}
# Times are written in milliseconds: a finer hop gives windows with the same begin time in the tables
MIN_HOP = 0.001
# a journal record: field -> the JSON types it may have (bool is never a number here)
_RECORD_FIELDS = {"path": (str,), "size": (int,), "mtime": (int, float), "name": (str,), "table": (str,),
                  "duration": (int, float), "windows": (int,), "detections": (int,), "scores": (str,)}
_RECORD_REQUIRED = ("path", "size", "mtime", "name", "table")


@dataclass
class Recording:
    path: str       # absolute
    name: str       # relative to the RECORDINGS argument it came from, '/'-separated (or its file name)
    size: int = 0
    mtime: float = 0.0
    duration: float = 0.0
    streams: list = field(default_factory=lambda: [None])   # the channels read (1-based), [None]: mixed


@dataclass
class DetectSummary:
    out_dir: str
    recordings: int = 0                 # recordings found
    done: int = 0                       # finished in this run
    resumed: int = 0                    # skipped as already done and unchanged
    skipped: list = field(default_factory=list)   # [(name, reason)]
    detections: int = 0                 # events in this run
    audio_s: float = 0.0                # seconds of audio processed in this run
    seconds: float = 0.0
    files: dict = field(default_factory=dict)     # what was written: {'detections': path, ...}
    interrupted: bool = False

    @property
    def realtime(self) -> float:
        return self.audio_s / self.seconds if self.seconds > 0 else float("inf")


# ---- recordings -------------------------------------------------------------------------------------

def collect_recordings(inputs) -> list:
    """[Recording] for audio files and folders (recursively; hidden files and folders left out), in the
    order given, folders sorted. A recording's name is its path relative to the folder given (or its file
    name); recordings whose names clash are named by their paths relative to the folder all of them are in
    ('A/x/rec.wav', 'B/x/rec.wav' given as two files), so every name in detections.csv is one recording."""
    from convnet_cli.ingest.audio import is_audio_name
    from convnet_cli.ingest.sources import find_audio

    out, seen_paths = [], set()
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            rels = find_audio(item)
            if not rels:
                raise DataError(f"{item}: no audio files (.wav, .flac, .ogg, .aiff) in this folder")
            found = [(os.path.join(item, r), r) for r in rels]
        elif os.path.isfile(item):
            if not is_audio_name(item):
                raise DataError(f"{item}: not an audio file name (.wav, .flac, .ogg, .aiff, .aif)")
            found = [(item, os.path.basename(item))]
        else:
            raise DataError(f"{item}: no such recording or folder")
        for p, rel in found:
            ap = os.path.abspath(p)
            if ap in seen_paths:
                continue
            seen_paths.add(ap)
            out.append(Recording(ap, rel.replace(os.sep, "/")))
    _unique_names(out)
    return out


def _unique_names(recordings):
    """Rename recordings whose names clash (in place): their paths relative to their common folder, else
    (a name that then clashes again) their absolute paths."""
    count = {}
    for r in recordings:
        count[r.name] = count.get(r.name, 0) + 1
    clash = [r for r in recordings if count[r.name] > 1]
    if not clash:
        return
    try:
        root = os.path.commonpath([os.path.dirname(r.path) for r in clash])
    except ValueError:   # different drives
        root = None
    for r in clash:
        r.name = (os.path.relpath(r.path, root) if root else r.path).replace(os.sep, "/")
    names = [r.name for r in recordings]
    if len(set(names)) < len(names):
        for r in recordings:
            if names.count(r.name) > 1:
                r.name = r.path.replace(os.sep, "/")


def _stat(rec: Recording) -> Recording:
    st = os.stat(rec.path)
    rec.size, rec.mtime = int(st.st_size), float(st.st_mtime)
    return rec


# ---- OUT_DIR state ----------------------------------------------------------------------------------

def read_done(out_dir: str, strict: bool = True) -> dict:
    """{absolute path: the latest done.jsonl record}. A line cut short by a crash is passed over; a line
    that is JSON but not a valid record is a DataError naming the journal and the line (strict), or passed
    over too (not strict: what --overwrite may remove)."""
    out = {}
    # done.jsonl, then the journals of processes of an MPI run that did not finish (their lines are newer)
    for path in [os.path.join(out_dir, DONE)] + _journal_parts(out_dir):
        if os.path.lexists(path):
            for rec in _records(path, out_dir, strict):
                out[rec["path"]] = rec
    return out


def _refuse_special(path: str):
    """DataError for a FIFO, socket or device under one of detect's names (reading it would wait forever)."""
    kind = special_file(path)
    if kind:
        raise DataError(f"{path}: is {kind}, not a file detect wrote; remove it, or give another --out")


def _records(path: str, out_dir: str, strict: bool = True):
    """The valid records of a journal, one at a time (see read_done)."""
    _refuse_special(path)
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the journal ({exc.strerror or exc}); check its permissions") from None
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            rec, reason = None, "not UTF-8"
        except ValueError:
            continue   # a line cut short by a crash
        else:
            reason = _bad_record(rec, out_dir)
        if reason is None:
            yield rec
        elif strict:
            raise DataError(f"{path} line {lineno}: {reason}; delete that line (detect then redoes its recording) "
                            f"or start over with --overwrite")


def _bad_record(rec, out_dir: str):
    """Why `rec` is not a journal record detect wrote, or None."""
    if not isinstance(rec, dict):
        return f"{json.dumps(rec)[:40]} is not a record (a JSON object with path, size, mtime, name, table)"
    for key, kinds in _RECORD_FIELDS.items():   # what is there and wrong first: the cell the user must fix
        if key not in rec:
            continue
        v = rec[key]
        if isinstance(v, bool) or not isinstance(v, kinds) or (isinstance(v, float) and not math.isfinite(v)):
            want = "text" if kinds == (str,) else "a whole number" if kinds == (int,) else "a number"
            return f"'{key}' is {json.dumps(v)[:40]}, not {want}"
    for key in _RECORD_REQUIRED:
        if key not in rec:
            return f"the record has no '{key}'"
    if not _plain_name(rec["table"]) or not rec["table"].endswith(raven.TABLE_SUFFIX):
        return f"'table' {rec['table']!r} is not the name of a table in OUT_DIR (<name>{raven.TABLE_SUFFIX})"
    if "scores" in rec:
        parts = rec["scores"].replace("\\", "/").split("/")
        if len(parts) != 2 or parts[0] != SCORES_DIR or not _plain_name(parts[1]) or not parts[1].endswith(".csv"):
            return f"'scores' {rec['scores']!r} is not a file in OUT_DIR/{SCORES_DIR}"
    for key in ("table", "scores"):
        if key in rec and not _stays_inside(out_dir, rec[key]):
            return f"'{key}' {rec[key]!r} is a link that leads out of OUT_DIR"
    return None


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not name.startswith(".") and \
        "/" not in name and "\\" not in name and "\0" not in name


def _stays_inside(out_dir: str, rel: str) -> bool:
    """False when OUT_DIR/rel exists and resolves (through symlinks) to somewhere outside OUT_DIR."""
    path = os.path.join(out_dir, rel)
    if not os.path.lexists(path):
        return True
    root = os.path.realpath(out_dir)
    real = os.path.realpath(path)
    return os.path.commonpath([root, real]) == root and real != root


def _journal_parts(out_dir: str) -> list:
    return sorted(glob.glob(os.path.join(glob.escape(out_dir), DONE_PART.format(rank="[0-9]*"))))


def _fold_journals(out_dir: str):
    """Append the lines of the per-process journals (an MPI run's) to done.jsonl, then remove them."""
    for part in _journal_parts(out_dir):
        for rec in _records(part, out_dir):
            _append_done(out_dir, rec)
        os.unlink(part)


def _append_done(out_dir: str, record: dict, journal: str = DONE):
    """One line, written with a single append and fsynced: a crash leaves at most a torn last line."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    path = os.path.join(out_dir, journal)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if os.fstat(fd).st_size:
            # a torn last line from a crash must not swallow this record
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def is_out_dir(path: str) -> bool:
    """True for a folder a detect wrote into: it holds a detect.json or a journal."""
    return os.path.isdir(path) and (os.path.lexists(os.path.join(path, DONE))
                                    or os.path.lexists(os.path.join(path, SETTINGS)) or bool(_journal_parts(path)))


def earlier_output(out_dir: str) -> list:
    """Names of an earlier detect's own files in out_dir (see the module doc): none unless a detect.json or
    a journal is there."""
    if not is_out_dir(out_dir):
        return []
    own = own_outputs(out_dir)
    fixed = OWN_NAMES if own is None else (DONE, SETTINGS, SCORES_DIR) + tuple(own)
    names = {n for n in fixed if os.path.lexists(os.path.join(out_dir, n))}
    names |= {os.path.basename(p) for p in _journal_parts(out_dir)}
    names |= {r["table"] for r in read_done(out_dir, strict=False).values()
              if os.path.lexists(os.path.join(out_dir, r["table"]))}
    return sorted(names)


def own_outputs(out_dir: str) -> list | None:
    """The fixed-name files (detections.csv, the combined table, scores.csv, skipped.txt) that detect.json
    says detect wrote into out_dir; None where it does not say (a detect.json of an older convnet): then every
    file under those names counts as detect's."""
    path = os.path.join(out_dir, SETTINGS)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            outs = json.load(f).get("outputs")
    except (OSError, ValueError, AttributeError):
        return None
    if not (isinstance(outs, list) and all(isinstance(n, str) for n in outs)):
        return None
    return sorted(n for n in outs if n in FIXED_OUTPUTS)


def _foreign_outputs(out_dir: str) -> list:
    """Files under detect's fixed names in an OUT_DIR that no detect journal claims (someone else's)."""
    if not os.path.isdir(out_dir) or is_out_dir(out_dir):
        return []
    return [n for n in OWN_NAMES if os.path.lexists(os.path.join(out_dir, n))]


def _clear(out_dir: str, names):
    for n in names:
        p = os.path.join(out_dir, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def _check_settings(out_dir: str, settings: dict):
    """ConfigError unless the earlier run's detect.json holds the same settings (a resume into a folder with
    no journal and no detect.json starts afresh)."""
    path = os.path.join(out_dir, SETTINGS)
    fix = "start over with --overwrite, or give another --out"
    if not os.path.lexists(path):
        if is_out_dir(out_dir):
            raise ConfigError(f"{path}: missing, so the earlier run's settings are unknown and --resume could mix "
                              f"tables made with other ones; {fix}")
        return
    _refuse_special(path)
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or "not valid JSON"
        raise ConfigError(f"{path}: unreadable ({why}), so the earlier run's settings are unknown and --resume "
                          f"could mix tables made with other ones; {fix}") from None
    if not isinstance(old, dict):
        raise ConfigError(f"{path}: not detect's settings (a JSON object); {fix}")
    for k in _FIXED:
        if k not in old and k not in _ADDED_LATER:
            raise ConfigError(f"{path}: no '{k}' setting, so the earlier run's settings are unknown and --resume "
                              f"could mix tables made with other ones; {fix}")
        was = old.get(k, _ADDED_LATER.get(k))
        if was != settings[k]:
            flag = "--" + k.replace("_", "-")
            if k in old:
                same = "use the same flags"
            elif was is None:
                same = f"the earlier run's convnet had no {flag}: leave it out to resume it"
            else:
                same = f"the earlier run's convnet had no {flag}: give {flag} {was:g} to resume it"
            raise ConfigError(f"{out_dir}: --resume with other settings than the earlier run ({k}: was "
                              f"{was!r}, now {settings[k]!r}); {same}, another --out, or --overwrite")


# ---- the work ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _interrupt_deferred():
    """Hold a Ctrl-C (SIGINT) until the block is done, then raise it: a recording's table, its done.jsonl
    line and the in-memory record of it are written together. Outside the main thread: no deferral."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        raise KeyboardInterrupt


def window_probabilities(run, path: str, spec, hop: float, batch: int, xp, on_progress=None, name=None,
                         channel=None, time_expansion: float = 1.0):
    """(starts (n,) float64, probs (n, K) float32 or None when there is no window, seconds covered) of
    every window of one recording (its `channel`, or the channels mixed; read at its header's rate times
    `time_expansion`); on_progress(seconds) as the windows advance. DataError (predict's) when the net gives
    a probability that is not finite: an overflowing checkpoint must not pass for 'no event'."""
    from convnet_cli.ingest.windows import iter_window_features
    from convnet_cli.predict.predict import check_probabilities

    starts, probs = [], []
    covered = 0.0
    # a block long enough for `batch` windows keeps forward passes full (the reader's default 60 s would
    # cut them at 59 windows of 2 s every 1 s); capped so that a huge --batch cannot ask for hours at once
    block_s = min(max(60.0, batch * hop + spec.duration), 900.0)
    for s, feats in iter_window_features(path, spec, hop, batch=batch, xp=xp, block_s=block_s, channel=channel,
                                         time_expansion=time_expansion):
        if len(s) == 0:
            continue
        starts.append(np.asarray(s, dtype=np.float64))
        p = run(feats)
        check_probabilities(p, lambda i: f"{name or path}@{float(s[i]):.3f}",
                            f"no table was written for {name or path} (the recordings finished before it are)")
        probs.append(p)
        if on_progress is not None:
            reach = float(s[-1]) + hop
            on_progress(reach - covered)
            covered = reach
    if not starts:
        return np.zeros(0), None, covered
    return np.concatenate(starts), np.concatenate(probs), covered


def _spec_and_hop(ckpt, hop):
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.windows import WindowSpec

    feats = ckpt.state.get("features")
    if not feats:
        raise DataError(f"{ckpt.path}: the network was trained on batches without feature settings (not made "
                        f"from audio), so detect cannot compute its windows; train on batches from make-batches")
    spec = FeatureSpec.from_dict(feats, ckpt.path)
    if hop is None:
        stored = WindowSpec.stored(ckpt.state.get("window"), feats)
        hop = stored.hop if stored is not None else WindowSpec.of(spec).hop
    hop = float(hop)
    if not (math.isfinite(hop) and hop >= MIN_HOP):
        raise ConfigError(f"--window-hop {hop:g}: give a finite number of seconds, at least {MIN_HOP:g} (the tables "
                          f"hold times in ms, so a finer hop only repeats windows)")
    return spec, hop


def _check_event_flags(merge_gap, split_dip, max_event):
    if not (math.isfinite(merge_gap) and merge_gap >= 0):
        raise ConfigError(f"--merge-gap {merge_gap:g}: give a finite number of seconds >= 0")
    if not (math.isfinite(split_dip) and 0 <= split_dip <= 1):
        raise ConfigError(f"--split-dip {split_dip:g}: give a probability difference between 0 (never split) and 1")
    if max_event is not None and not (math.isfinite(max_event) and max_event > 0):
        raise ConfigError(f"--max-event {max_event:g}: give a finite number of seconds > 0 (or leave it out)")


@dataclass
class DetectOptions:
    """detect's settings besides the checkpoint, the recordings, OUT_DIR and the MPI world (docs/COMMANDS.md,
    detect): the windows, the events, what is written and how the work runs."""

    window_hop: float | None = None      # --window-hop (default: the training window_hop, else half a window)
    threshold: object = None             # --threshold: T, 'CLASS=T,...' or a thresholds.yaml
    classes: object = None               # --classes (default: all but a background class)
    merge_gap: float = 0.0
    split_dip: float = DEFAULT_SPLIT_DIP
    max_event: float | None = None
    scores: bool = False                 # also scores.csv
    combined: bool = False               # also detections.selections.txt
    resume: bool = False
    overwrite: bool = False
    batch: int = 128                     # windows per forward pass
    device: str = "cpu"
    progress: bool = True
    channel: object = "mix"              # --channel: 'mix', 'all' or N (1-based)
    time_expansion: float = 1.0          # --time-expansion: the true rate is the header's times this

    def check(self):
        """ConfigError for flags that exclude each other or are out of range; normalises the values."""
        from convnet_cli.ingest.audio import check_time_expansion, parse_channel

        if self.resume and self.overwrite:
            raise ConfigError("give --resume or --overwrite, not both")
        self.merge_gap, self.split_dip = float(self.merge_gap), float(self.split_dip)
        self.max_event = None if self.max_event is None else float(self.max_event)
        _check_event_flags(self.merge_gap, self.split_dip, self.max_event)
        self.channel = parse_channel(self.channel)
        self.time_expansion = check_time_expansion(self.time_expansion)

    @property
    def by_channel(self) -> bool:
        """True when the channels are read apart (--channel N or all): the tables and CSVs say which."""
        return self.channel != "mix"


def detect(checkpoint, inputs, out_dir: str, *, echo=None, world=None, options: DetectOptions | None = None,
           **kw) -> DetectSummary:
    """Run the net over every recording of `inputs` and write OUT_DIR (see the module doc).

    options: a DetectOptions, or its fields as keywords (window_hop=, threshold=, ..., channel=, time_expansion=).
    KeyboardInterrupt: the files covering the recordings finished so far are written, then it is raised
    again (the CLI exits 130). world: under MPI, the recordings are split over its processes (module doc);
    the summary of rank 0 covers all of them."""
    from convnet_cli.predict.predict import Runner, checkpoint_multi_label, load_model

    unknown = [k for k in kw if k not in {f.name for f in fields(DetectOptions)}]
    if unknown:
        raise TypeError(f"detect: unknown option {unknown[0]!r}")
    o = replace(options, **kw) if options is not None else DetectOptions(**kw)
    world = world or SingleWorld()
    echo = (echo or (lambda msg: None)) if world.is_root else (lambda msg: None)
    o.check()
    t0 = time.perf_counter()
    recordings = on_root(world, lambda: collect_recordings(inputs))
    net, ckpt = load_model(checkpoint, rank_device(o.device, world))
    spec, hop = _spec_and_hop(ckpt, o.window_hop)
    if o.max_event is not None and o.max_event < spec.duration:
        raise ConfigError(f"--max-event {o.max_event:g}: shorter than the checkpoint's {spec.duration:g}-s window "
                          f"(the shortest event); give at least {spec.duration:g} s, or leave it out")
    if hop > spec.duration:
        echo(f"note: --window-hop {hop:g} s is longer than the {spec.duration:g}-s window: "
             f"{100 * (1 - spec.duration / hop):.0f}% of each recording is never looked at")
    label_names = [str(n) for n in ckpt.state["label_names"]]
    multi_label = checkpoint_multi_label(ckpt.state)   # every class on its own, none of them background
    wanted = reported_classes(label_names, o.classes, multi_label)
    check_class_names(wanted, ckpt.path)
    thresholds = parse_thresholds(o.threshold, label_names)
    run = Runner(net, ckpt, net.output_layer(), o.batch, 1)
    settings = {"checkpoint": os.path.abspath(ckpt.path), "checkpoint_mtime": os.path.getmtime(ckpt.path),
                "hop": hop, "duration": float(spec.duration),
                "thresholds": {c: thresholds[c] for c in wanted}, "classes": wanted,
                "merge_gap": o.merge_gap, "split_dip": o.split_dip, "max_event": o.max_event,
                "channel": o.channel, "time_expansion": o.time_expansion,
                "label_names": label_names, "features": spec.to_dict(), "multi_label": multi_label}

    held = []   # rank 0's lock on OUT_DIR, held until every file is written

    def prepare():
        make_out_dir(out_dir, "--out")
        lock = BatchDirLock(out_dir, LOCK, "convnet detect", "wait for it to finish, or give another --out")
        try:
            _prepare_out(out_dir, settings, o.resume, o.overwrite)
        except BaseException:
            lock.release()
            raise
        held.append(lock)

    on_root(world, prepare)
    job = _Job(run=run, net=net, spec=spec, window_hop=hop, label_names=label_names, wanted=wanted,
               thresholds=thresholds, settings=settings, options=o)
    try:
        return _detect_into(out_dir, recordings, job, echo=echo, world=world, t0=t0)
    except ConvnetError:
        if held:   # rank 0, which prepared OUT_DIR
            _forget_empty_run(out_dir)
        raise
    finally:
        for lock in held:
            lock.release()


@dataclass
class _Job:
    """What detect's work needs once the checkpoint is loaded and the settings are made."""

    run: object              # predict's Runner
    net: object
    spec: object             # the checkpoint's FeatureSpec
    window_hop: float        # seconds between windows
    label_names: list
    wanted: list             # the classes reported
    thresholds: dict
    settings: dict           # detect.json's
    options: DetectOptions

    @property
    def band(self) -> tuple:
        """(low, high) Hz of the tables' frequency box: the features' band."""
        return float(self.spec.fmin), float(self.spec.fmax_hz)


def _todo(out_dir, recordings, job, done, summary) -> list:
    """The recordings this run does (stat'ed, their length and streams read from the header); those a resume
    finds done and unchanged are counted in `summary.resumed`, those that cannot be read listed in
    `summary.skipped`. ChannelError (exit 2) for a --channel N past a recording's channels."""
    from convnet_cli.ingest.audio import AudioError, channel_streams
    from convnet_cli.ingest.windows import recording_header

    o = job.options
    todo = []
    for rec in recordings:
        try:
            _stat(rec)
        except OSError as exc:
            summary.skipped.append((rec.name, f"cannot read ({exc.strerror or exc})"))
            continue
        prev = done.get(rec.path)
        if (prev and prev.get("size") == rec.size and prev.get("mtime") == rec.mtime
                and os.path.exists(os.path.join(out_dir, prev.get("table", "")))
                and (not o.scores or (prev.get("scores") and os.path.exists(os.path.join(out_dir, prev["scores"]))))):
            summary.resumed += 1
            continue
        try:
            rec.duration, _, channels = recording_header(rec.path, o.time_expansion)
        except AudioError as exc:
            summary.skipped.append((rec.name, exc.reason))
            continue
        rec.streams = channel_streams(rec.path, o.channel, channels)
        todo.append(rec)
    return todo


def _table_names(out_dir, recordings, todo, done) -> dict:
    """{path: table name} for the recordings to do: kept for recordings already done, new ones chosen so that
    nothing clashes, neither with each other nor with a file of someone else's (a Raven table of the user's)
    in OUT_DIR."""
    redo = {t.path for t in todo}
    own = {r["table"] for r in done.values()}
    taken = {r["table"] for p, r in done.items() if p not in redo}
    taken |= {n for n in os.listdir(out_dir) if n.endswith(raven.TABLE_SUFFIX) and n not in own}
    names = raven.table_names(sorted({r.name for r in recordings} | {r.get("name", "") for r in done.values()} - {""}),
                              reserved=("detections",))
    fresh = {}
    for rec in todo:
        t = names.get(rec.name) or raven.table_names([rec.name])[rec.name]
        base, k = t[:-len(raven.TABLE_SUFFIX)], 1
        while t in taken:
            k += 1
            t = f"{base}__{k}{raven.TABLE_SUFFIX}"
        taken.add(t)
        fresh[rec.path] = t
    return fresh


def _recording_events(rec, job, bar, echo):
    """(window starts, probabilities, events) of one recording over its streams (each channel read apart, or
    the channels mixed), events in time order with their channel. AudioError when it cannot be read."""
    from convnet_cli.ingest.audio import stream_name

    o, spec, s = job.options, job.spec, job.settings
    all_starts, all_probs, events = [], [], []
    for ch in rec.streams:
        name = rec.name if ch is None else stream_name(rec.name, ch)
        starts, probs, covered = window_probabilities(job.run, rec.path, spec, job.window_hop, o.batch, job.net.xp,
                                                      bar.add, name=name, channel=ch,
                                                      time_expansion=o.time_expansion)
        bar.add(max(0.0, rec.duration - covered))
        if len(starts) == 0:
            probs = np.zeros((0, len(job.label_names)), np.float32)
        found = windows_to_events(starts, probs, job.label_names, spec.duration, job.thresholds, job.wanted,
                                  s["merge_gap"], s["split_dip"], s["max_event"])
        events.extend(replace(e, channel=ch) for e in found)
        all_starts.append(starts)
        all_probs.append(probs)
    if len(all_starts[0]) == 0:
        echo(f"note: {rec.name} ({rec.duration:.2f} s) is shorter than one {spec.duration:g}-s window; no windows")
    events.sort(key=lambda e: (e.begin, e.channel or 0, e.label))
    return all_starts, all_probs, events


def _detect_into(out_dir, recordings, job: _Job, *, echo, world, t0) -> DetectSummary:
    """detect's work once OUT_DIR is prepared and locked."""
    from convnet_cli.ingest.audio import AudioError, stream_name

    o, spec = job.options, job.spec
    low_hz, high_hz = job.band
    done = read_done(out_dir) if o.resume else {}

    summary = DetectSummary(out_dir=out_dir, recordings=len(recordings))
    todo = _todo(out_dir, recordings, job, done, summary)
    fresh = _table_names(out_dir, recordings, todo, done)
    if summary.resumed:
        echo(f"resume: {summary.resumed} recording(s) already done and unchanged, {len(todo)} to do")

    mine = _deal(todo, world)
    journal = DONE if world.size == 1 else DONE_PART.format(rank=world.rank)
    read_before = len(summary.skipped)   # the same on every process; those found in the loop are its own
    bar = AudioProgress("detect", sum(r.duration * len(r.streams) for r in mine), enabled=o.progress and world.is_root)
    this_run = {}   # table name -> events of recordings done in this run (saves re-reading their tables)
    try:
        for rec in mine:
            before = bar.done
            try:
                starts, probs, events = _recording_events(rec, job, bar, echo)
            except AudioError as exc:
                summary.skipped.append((rec.name, exc.reason))
                bar.add(max(0.0, rec.duration * len(rec.streams) - (bar.done - before)))
                continue
            with _interrupt_deferred():  # table, done.jsonl and the bookkeeping go together or not at all
                table = fresh[rec.path]
                record = {"path": rec.path, "size": rec.size, "mtime": rec.mtime, "name": rec.name, "table": table,
                          "duration": rec.duration, "windows": int(sum(len(x) for x in starts)),
                          "detections": len(events)}
                if o.scores:
                    os.makedirs(os.path.join(out_dir, SCORES_DIR), exist_ok=True)
                    part = os.path.join(SCORES_DIR, table[:-len(raven.TABLE_SUFFIX)] + ".csv")
                    write_text_atomic(os.path.join(out_dir, part), "".join(
                        raven.scores_text(stream_name(rec.name, ch) if o.channel == "all" else rec.name, st,
                                          spec.duration, p)
                        for ch, st, p in zip(rec.streams, starts, probs)))
                    record["scores"] = part
                raven.write_table(os.path.join(out_dir, table), events, os.path.basename(rec.path), low_hz, high_hz)
                _append_done(out_dir, record, journal)
                done[rec.path] = record
                this_run[table] = [(e.begin, e.end, e.label, e.score, e.channel or raven.CHANNEL) for e in events]
                summary.done += 1
                summary.detections += len(events)
                summary.audio_s += rec.duration
    except KeyboardInterrupt:
        bar.close()
        summary.interrupted = True
        _gather(world, out_dir, done, this_run, summary, read_before)
        if world.is_root:
            _finish(out_dir, done, this_run, job, summary)
        summary.seconds = time.perf_counter() - t0
        echo(f"interrupted: {summary.done} recording(s) finished in this run and written "
             f"({len(done)} in {out_dir} in all); run again with --resume to do the rest")
        raise
    except BaseException:
        bar.close()
        raise
    bar.close()
    if _gather(world, out_dir, done, this_run, summary, read_before):
        summary.interrupted = True
    if world.is_root:
        _finish(out_dir, done, this_run, job, summary)
    summary.seconds = time.perf_counter() - t0
    if summary.interrupted:
        echo(f"interrupted: {summary.done} recording(s) finished in this run and written "
             f"({len(done)} in {out_dir} in all); run again with --resume to do the rest")
        raise KeyboardInterrupt
    return summary


def _prepare_out(out_dir, settings, resume, overwrite):
    """Refuse, clear or check an earlier detect's output in OUT_DIR (made and locked); write detect.json."""
    foreign = _foreign_outputs(out_dir)
    if foreign:
        raise ConfigError(f"{out_dir}: holds {', '.join(foreign)}, which no detect journal there names (no "
                          f"{SETTINGS} or {DONE}); move them away or give another --out")
    earlier = earlier_output(out_dir)
    known = own_outputs(out_dir)
    if earlier and not (resume or overwrite):
        raise ConfigError(f"{out_dir}: holds an earlier detect's output ({', '.join(earlier[:3])}"
                          f"{', ...' if len(earlier) > 3 else ''}); add --resume to finish it, --overwrite to "
                          f"start over, or give another --out")
    if overwrite and earlier:
        _clear(out_dir, earlier)
    if resume:
        _check_settings(out_dir, settings)
        _fold_journals(out_dir)   # an interrupted MPI run's journals: one done.jsonl for any K
    # the fixed-name files detect has written here (a resume keeps the earlier run's; an older detect.json
    # that does not say: those under detect's names), so that --overwrite removes only detect's own
    if resume and earlier:
        settings["outputs"] = known if known is not None else sorted(
            n for n in FIXED_OUTPUTS if os.path.lexists(os.path.join(out_dir, n)))
    else:
        settings["outputs"] = []
    write_text_atomic(os.path.join(out_dir, SETTINGS), json.dumps(settings, indent=2) + "\n")


def _forget_empty_run(out_dir: str):
    """After an error before any recording was done: detect.json goes (with the scores folder), so the next
    run into OUT_DIR needs no --overwrite or --resume for a run that wrote nothing."""
    if os.path.lexists(os.path.join(out_dir, DONE)) or _journal_parts(out_dir):
        return
    _clear(out_dir, [n for n in (SETTINGS, SCORES_DIR) if os.path.lexists(os.path.join(out_dir, n))])


def _deal(todo, world) -> list:
    """This process's recordings: all of them, or under MPI its deal (longest first to the least loaded),
    in the order given."""
    if world.size == 1:
        return todo
    load = [0.0] * world.size
    mine = set()
    for i in sorted(range(len(todo)), key=lambda i: (-todo[i].duration, i)):
        r = min(range(world.size), key=lambda k: (load[k], k))
        load[r] += max(todo[i].duration, 1e-3)
        if r == world.rank:
            mine.add(i)
    return [rec for i, rec in enumerate(todo) if i in mine]


def _gather(world, out_dir, done, this_run, summary, read_before) -> bool:
    """Under MPI: rank 0 takes in every process's records, events and counts (into `done`, `this_run`,
    `summary`) and moves the per-process journals into done.jsonl. True when a process was interrupted."""
    if world.size == 1:
        return False
    records = [r for r in done.values() if r.get("table") in this_run]
    part = (records, this_run, summary.done, summary.detections, summary.audio_s,
            summary.skipped[read_before:], summary.interrupted)
    parts = world.gather(part)
    interrupted = None
    if world.is_root:
        summary.done, summary.detections, summary.audio_s = 0, 0, 0.0
        del summary.skipped[read_before:]
        for records, events, n_done, n_det, audio_s, skipped, stopped in parts:
            for r in records:
                done[r["path"]] = r
            this_run.update(events)
            summary.done += n_done
            summary.detections += n_det
            summary.audio_s += audio_s
            summary.skipped.extend(skipped)
            interrupted = interrupted or stopped
        _fold_journals(out_dir)
    return bool(world.bcast(interrupted))


def _finish(out_dir, done, this_run, job: _Job, summary):
    """detections.csv (+ scores.csv, the combined table) over every recording done, and skipped.txt."""
    o, label_names = job.options, job.label_names
    scores, combined = o.scores, o.combined
    low_hz, high_hz = job.band
    records = sorted(done.values(), key=lambda r: r.get("name", r["path"]))
    records = [r for r in records if os.path.exists(os.path.join(out_dir, r.get("table", "")))]

    def events_of(r):
        t = r["table"]
        return this_run[t] if t in this_run else raven.read_own_table(os.path.join(out_dir, t), channels=True)

    summary.files["tables"] = len(records)
    summary.files["detections"] = raven.write_detections_csv(
        os.path.join(out_dir, raven.DETECTIONS_CSV), ((r["name"], events_of(r)) for r in records), o.by_channel)
    if combined:
        summary.files["combined"] = raven.write_combined_table(
            os.path.join(out_dir, raven.COMBINED_NAME),
            ((r["path"], r.get("duration", 0.0), events_of(r)) for r in records), low_hz, high_hz)
    if scores:
        parts = [(r["name"], os.path.join(out_dir, r["scores"])) for r in records
                 if r.get("scores") and os.path.exists(os.path.join(out_dir, r["scores"]))]
        summary.files["scores"] = raven.write_scores_csv(os.path.join(out_dir, raven.SCORES_CSV), label_names, parts)
    skipped_path = os.path.join(out_dir, SKIPPED)
    written = {raven.DETECTIONS_CSV} | ({raven.COMBINED_NAME} if combined else set()) | (
        {raven.SCORES_CSV} if scores else set())
    outputs = set(job.settings.get("outputs") or ()) | written
    if summary.skipped:
        write_text_atomic(skipped_path, format_skipped(summary.skipped))
        summary.files["skipped"] = skipped_path
        outputs.add(SKIPPED)
    else:
        outputs.discard(SKIPPED)
        if os.path.exists(skipped_path) and SKIPPED in (job.settings.get("outputs") or ()):
            os.unlink(skipped_path)  # an earlier run's list: every recording of this run was read
    job.settings["outputs"] = sorted(outputs)
    write_text_atomic(os.path.join(out_dir, SETTINGS), json.dumps(job.settings, indent=2) + "\n")
