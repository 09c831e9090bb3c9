"""Checkpoints: one `.npz` per save, written to a temporary name, flushed, fsynced and renamed, so a crash
never leaves a torn or missing file. Arrays are named `<layer>/<param>` and `<layer>/<param>/<state>`;
`__state__` is a JSON string with everything else a resume or a prediction needs. Read with
allow_pickle=False: a checkpoint can hold no code.
"""
from __future__ import annotations

import errno
import json
import os
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from convnet_cli.errors import DataError
from convnet_cli.fileio import atomic_write

FORMAT_VERSION = 1
_NAME = re.compile(r"^(\d+)\.(\d+)\.npz$")


@dataclass
class Checkpoint:
    path: str
    arrays: dict  # layer arrays, host numpy
    state: dict   # the JSON state

    @property
    def data_mean(self):
        return np.asarray(self.state["data_mean"], dtype=np.float32).reshape(-1, 1)

    @property
    def data_std(self):
        return np.asarray(self.state["data_std"], dtype=np.float32).reshape(-1, 1)


def _save_error(path, exc):
    if exc.errno == errno.ENOSPC:
        return DataError(f"{path}: disk full while writing the checkpoint; free space and resume "
                         f"(the previous checkpoint is intact)")
    return exc


def save_checkpoint(path: str, arrays: dict, state: dict) -> str:
    """Write atomically; on failure (disk full, ...) the previous file at `path` is untouched."""
    state = dict(state, version=FORMAT_VERSION)
    payload = dict(arrays)
    payload["__state__"] = np.array(json.dumps(state))
    atomic_write(path, lambda f: np.savez(f, **payload), on_error=_save_error)
    return path


def load_checkpoint(path: str) -> Checkpoint:
    path = resolve_checkpoint(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable convnet checkpoint ({exc}); pick another one in the run "
                        f"directory") from None
    if "__state__" not in arrays:
        raise DataError(f"{path}: not a convnet checkpoint (no __state__ entry)")
    try:
        state = json.loads(str(arrays.pop("__state__")))
    except json.JSONDecodeError:
        raise DataError(f"{path}: its __state__ entry is not valid JSON; the file is damaged") from None
    if state.get("version", 0) > FORMAT_VERSION:
        raise DataError(f"{path}: written by a newer convnet (format {state.get('version')}); upgrade convnet")
    return Checkpoint(path, arrays, state)


def list_checkpoints(run_dir: str) -> list:
    """[(epoch, batch, path)] of the numbered checkpoints, oldest first."""
    out = []
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    for n in names:
        m = _NAME.match(n)
        if m:
            p = os.path.join(run_dir, n)
            out.append((int(m.group(1)), int(m.group(2)), os.path.getmtime(p), p))
    out.sort(key=lambda t: (t[2], t[0], t[1]))
    return [(e, b, p) for e, b, _, p in out]


def newest_checkpoint(run_dir: str) -> str | None:
    cps = list_checkpoints(run_dir)
    return cps[-1][2] if cps else None


def resolve_checkpoint(path: str, prefer_best: bool = True) -> str:
    """A checkpoint file as given, or in a run directory best.npz (prefer_best) else the newest one."""
    if os.path.isdir(path):
        best = os.path.join(path, "best.npz")
        newest = newest_checkpoint(path)
        if prefer_best and os.path.exists(best):
            return best
        if newest:
            return newest
        if os.path.exists(best):
            return best
        raise DataError(f"{path}: no checkpoint in this folder (expected <epoch>.<batch>.npz or best.npz); "
                        f"give a run directory made by 'convnet train'")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such checkpoint or run directory")
    return path


def prune_checkpoints(run_dir: str, keep: int | None):
    """Keep the newest `keep` numbered checkpoints (best.npz is separate and always kept)."""
    if not keep or keep <= 0:
        return
    cps = list_checkpoints(run_dir)
    for _, _, p in cps[:-keep]:
        try:
            os.unlink(p)
        except OSError:
            pass
