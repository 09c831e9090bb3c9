"""Checks and housekeeping around a run's start and resume (docs/COMMANDS.md, train): the options are in range, the
batch folder fits the run, the paths the run keeps are absolute, every params file version is kept, and
what a killed run left behind (temp files, log records past its last checkpoint) is cleaned up.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from convnet_cli.data.targets import kind_of
from convnet_cli.errors import ConfigError, DataError
from convnet_cli.fileio import write_text_atomic

MAX_EPOCHS = 1_000_000
MAX_RANGE = 100_000          # batch numbers one range may name
LOG_NAME = "train_log.jsonl"
PATH_OPTIONS = ("data_path", "save_path", "layer_def", "layer_params")
# Temp files our writers leave when killed: fileio.atomic_write's '.<name>.<pid>.<hex>.tmp', the old '.best.tmp'
# and '.tmp-*' of earlier versions.
_STALE = re.compile(r"^(\..+\.tmp|\.tmp-.*)$")


def check_options(o):
    """ConfigError for a numeric option out of range (the API path; the CLI's click ranges say the same)."""
    checks = (("--seed", o.seed, 0, None), ("--epochs", o.epochs, 1, MAX_EPOCHS), ("--mini", o.mini, 1, None),
              ("--test-freq", o.test_freq, 1, None), ("--max-checkpoints", o.max_checkpoints, 0, None),
              ("--early-stop", o.early_stop, 1, None))
    for flag, v, lo, hi in checks:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{flag} {v!r}: must be an integer")
        if v < lo or (hi is not None and v > hi):
            bound = f"from {lo} to {hi:,}" if hi is not None else f"{lo} or more"
            raise ConfigError(f"{flag} {v}: must be {bound}")


def absolute_paths(o):
    """Make the run's file options absolute, so a resume from any folder reads the files it was given."""
    for name in PATH_OPTIONS:
        v = getattr(o, name, None)
        if v:
            setattr(o, name, os.path.abspath(os.path.expanduser(os.fspath(v))))


def saved_path(value, fallback):
    """A path option saved in a checkpoint: as saved when absolute; a relative one (runs of earlier versions)
    was relative to a folder the checkpoint does not record, so `fallback` (never the current folder)."""
    if value and os.path.isabs(value):
        return value
    return fallback


def check_labels(batchset, where: str):
    """DataError unless the batches carry labels of two classes or more."""
    names = list(batchset.label_names or [])
    if not names:
        raise DataError(f"{where}: the batches carry no labels (made with --no-labels, for prediction); "
                        "train on a labelled batch folder (make-batches with class folders or --labels)")
    if len(names) < 2:
        raise DataError(f"{where}: the batches hold one class only ('{names[0]}'); a classifier needs two classes "
                        "or more: add the other class(es) to AUDIO_DIR and run make-batches again")


def overlap_warning(train_range, test_range) -> str | None:
    """A warning line when the train and test ranges share batches, else None."""
    shared = sorted(set(train_range or []) & set(test_range or []))
    if not shared:
        return None
    shown = ", ".join(str(b) for b in shared[:5]) + (" …" if len(shared) > 5 else "")
    return (f"warning: --train-range and --test-range share batch(es) {shown}; the test cost and error will "
            "look better than they are")


def check_batches_fit(state, batchset, ckpt_path: str):
    """DataError when the batch folder is not the data the checkpoint was trained on (shape, single- or
    multi-label targets, label names and their order, normalisation)."""
    where = f"{batchset.batch_dir}: does not fit the run of {ckpt_path}"
    fix = "resume with the run's own --data-path, or start a new run (--init-from) on this data"
    saved_shape = [int(v) for v in state.data_shape or []]
    if saved_shape and saved_shape != list(batchset.data_shape):
        raise DataError(f"{where}: data shape {list(batchset.data_shape)}, the run was trained on {saved_shape}; {fix}")
    run_kind, data_kind = kind_of(state), kind_of(batchset)
    if run_kind is not data_kind:
        raise DataError(f"{where}: the run trained on {run_kind.name} batches and these are {data_kind.name}; "
                        f"resume with the run's own --data-path, or make the batches again with {run_kind.made_with}")
    saved_names = [str(n) for n in state.label_names or []]
    if saved_names and saved_names != list(batchset.label_names):
        raise DataError(f"{where}: label names {_short(batchset.label_names)}, the run's are {_short(saved_names)} "
                        f"(every prediction would be mislabelled); {fix}")
    for key, saved, now in (("data_mean", state.data_mean, batchset.data_mean),
                            ("data_std", state.data_std, batchset.data_std)):
        if saved is None or len(saved) == 0:
            continue
        a = np.asarray(saved, dtype=np.float32).reshape(-1)
        b = np.asarray(now, dtype=np.float32).reshape(-1)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-6):
            raise DataError(f"{where}: its normalisation ({key} in batches.meta) differs from the run's; {fix}")


def _short(names) -> str:
    names = [str(n) for n in names]
    return "[" + ", ".join(names[:6]) + (", …" if len(names) > 6 else "") + "]"


def clean_stale_temps(run_dir: str) -> list:
    """Remove the temp files a killed run left in `run_dir`; returns their names."""
    removed = []
    try:
        names = os.listdir(run_dir)
    except OSError:
        return removed
    for n in names:
        if _STALE.match(n) and os.path.isfile(os.path.join(run_dir, n)):
            try:
                os.unlink(os.path.join(run_dir, n))
                removed.append(n)
            except OSError:
                pass
    return removed


def cut_log(run_dir: str, state) -> int:
    """Cut train_log.jsonl back to the checkpoint a resume starts from: keep the first len(state.history)
    train/test records (the checkpoint's history holds one entry per logged record) and the records between
    them; drop the rest (written after that checkpoint by a run that was killed). Atomic. Returns the number
    of records dropped."""
    path = os.path.join(run_dir, LOG_NAME)
    if not os.path.isfile(path):
        return 0
    want = len(state.history or [])
    kept, seen, dropped = [], 0, 0
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1       # a torn last line
                continue
            counted = isinstance(rec, dict) and rec.get("type") in ("train", "test")
            if seen >= want and (counted or _after(rec, state)):
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
            seen += counted
    if dropped:
        write_text_atomic(path, "".join(kept))
    return dropped


def _after(rec, state) -> bool:
    """A non-train/test record (a params version) written after the resume point."""
    return isinstance(rec, dict) and rec.get("batches_done", 0) > state.batches_done


def params_version_name(run_dir: str, base: str, text: str) -> tuple:
    """(file name in run_dir for the params text `text`, True when it must be written). The first version
    keeps `base` (params.yaml); later different ones are params.2.yaml, params.3.yaml, ...; a text equal to
    a version already kept reuses its name."""
    stem, ext = os.path.splitext(base)
    versions = [base] + [f"{stem}.{k}{ext}" for k in range(2, 10_000)]
    for name in versions:
        p = os.path.join(run_dir, name)
        if not os.path.exists(p):
            return name, True
        try:
            with open(p, "r", encoding="utf-8") as f:
                if f.read() == text:
                    return name, False
        except (OSError, UnicodeDecodeError):
            continue
    raise DataError(f"{run_dir}: too many params file versions; start a new run")


def keep_params_version(run_dir: str, base: str, text: str, source: str, state) -> str:
    """Keep `text` (the params file a run trains with from now on) in the run directory and log which
    version took effect when; returns its file name."""
    name, new = params_version_name(run_dir, base, text)
    if new:
        write_text_atomic(os.path.join(run_dir, name), text)
    last = None
    path = os.path.join(run_dir, LOG_NAME)
    if os.path.isfile(path):
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and rec.get("type") == "params":
                    last = rec.get("file")
    if last != name:
        rec = {"type": "params", "file": name, "source": source, "epoch": state.epoch,
               "batch_in_epoch": state.batch_in_epoch, "batches_done": state.batches_done}
        append_log(path, rec)
    return name


def append_log(path: str, record: dict):
    """Append one JSON line to the run's log; a write failure is a DataError naming the log."""
    from convnet_cli.fileio import write_error

    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise write_error(path, exc) from None
