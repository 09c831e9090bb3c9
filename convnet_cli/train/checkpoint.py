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
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from convnet_cli.errors import DataError
from convnet_cli.fileio import atomic_write, write_error

FORMAT_VERSION = 1
_NAME = re.compile(r"^(\d+)\.(\d+)\.npz$")


@dataclass
class RunState:
    """Everything a resume or a prediction needs besides the arrays; saved as the checkpoint's `__state__` JSON.

    The trainer moves the position fields (epoch .. batches_done) as it goes; a resume starts at minibatch
    `minibatch` of batch file `batch_in_epoch` (0-based, in the epoch's order) of epoch `epoch`.
    """

    epoch: int = 1               # the epoch being trained (1-based); epochs + 1 once all are done
    batch_in_epoch: int = 0      # batch files of this epoch done
    batchnum: int = 0            # the batch file number trained last
    minibatch: int = 0           # minibatches of the current batch file done (non-zero only after an interrupt)
    batches_done: int = 0        # batch files done over the whole run
    options: dict = field(default_factory=dict)  # the TrainOptions, as a dict
    layer_def: str = ""          # the layer definition's text, and its file name
    layer_params: str = ""
    layer_def_name: str = "layers.yaml"
    layer_params_name: str = "params.yaml"
    label_names: list = field(default_factory=list)
    multi_label: bool = False    # trained on multi-label targets (batches.meta multi_label): logistic outputs
    data_shape: list = field(default_factory=list)   # (C, H, W) of a case
    data_mean: list = field(default_factory=list)    # the training statistics, flat
    data_std: list = field(default_factory=list)
    features: dict | None = None  # how make-batches computed the features (predict recomputes them so)
    window: dict | None = None    # the windows of long recordings the batches hold ({duration, hop}): detect's
    data_path: str = ""
    rng: dict = field(default_factory=dict)
    history: list = field(default_factory=list)      # {type, epoch, batch, progress, cost, error} per record
    best: dict | None = None     # {metric, epoch, batch} of the best test so far
    seconds: float = 0.0         # training time so far
    tests_without_improvement: int = 0
    stopped_early: bool = False
    # the computation path each conv shape took ({shape key: path}, layers/winograd.py choose): a resume takes
    # the same paths, so it computes the same bits on any machine and whatever its algorithm cache says
    conv_algos: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        """From a checkpoint's state (keys this version does not know, such as `version`, are left out)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Checkpoint:
    path: str
    arrays: dict  # layer arrays, host numpy
    state: dict   # the JSON state (RunState.to_dict() plus `version`)

    @property
    def run_state(self) -> RunState:
        return RunState.from_dict(self.state)

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
    return write_error(path, exc)


def save_checkpoint(path: str, arrays: dict, state) -> str:
    """Write arrays and state (a RunState, or its dict) atomically; on failure (disk full, ...) the previous
    file at `path` is untouched."""
    state = dict(state.to_dict() if isinstance(state, RunState) else state, version=FORMAT_VERSION)
    payload = dict(arrays)
    payload["__state__"] = np.array(json.dumps(state))
    atomic_write(path, lambda f: np.savez(f, **payload), on_error=_save_error)
    return path


def load_checkpoint(path: str, check_finite: bool = True) -> Checkpoint:
    """The checkpoint at `path` (a file or a run directory), its state validated; check_finite: refuse
    arrays that hold NaN or inf."""
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
    validate_state(state, path)
    if state.get("version", 0) > FORMAT_VERSION:
        raise DataError(f"{path}: written by a newer convnet (format {state.get('version')}); upgrade convnet")
    if check_finite:
        check_arrays_finite(arrays, path)
    return Checkpoint(path, arrays, state)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num_list(v) -> bool:
    return isinstance(v, list) and all(_is_num(x) for x in v)


# key -> (test, what it must be). Keys a checkpoint must have are in _REQUIRED; the rest are checked when present.
_STATE_KEYS = {
    "version": (_is_int, "an integer"),
    "epoch": (lambda v: _is_int(v) and v >= 1, "an integer, 1 or more"),
    "batch_in_epoch": (lambda v: _is_int(v) and v >= 0, "an integer, 0 or more"),
    "batchnum": (lambda v: _is_int(v) and v >= 0, "an integer, 0 or more"),
    "minibatch": (lambda v: _is_int(v) and v >= 0, "an integer, 0 or more"),
    "batches_done": (lambda v: _is_int(v) and v >= 0, "an integer, 0 or more"),
    "options": (lambda v: isinstance(v, dict), "a mapping"),
    "layer_def": (lambda v: isinstance(v, str) and v.strip() != "", "the layer definition's text"),
    "layer_params": (lambda v: isinstance(v, str), "text"),
    "layer_def_name": (lambda v: isinstance(v, str), "a file name"),
    "layer_params_name": (lambda v: isinstance(v, str), "a file name"),
    "label_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "data_shape": (lambda v: isinstance(v, list) and len(v) == 3 and all(_is_int(x) and x > 0 for x in v),
                   "[C, H, W], three positive integers"),
    "data_mean": (_num_list, "a list of numbers"),
    "data_std": (_num_list, "a list of numbers"),
    "features": (lambda v: v is None or isinstance(v, dict), "a mapping or null"),
    "data_path": (lambda v: isinstance(v, str), "a path"),
    "rng": (lambda v: isinstance(v, dict), "a mapping"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v), "a list of records"),
    "best": (lambda v: v is None or (isinstance(v, dict) and {"epoch", "batch"} <= set(v)),
             "null or a record with epoch and batch"),
    "seconds": (_is_num, "a number"),
    "tests_without_improvement": (lambda v: _is_int(v) and v >= 0, "an integer, 0 or more"),
    "stopped_early": (lambda v: isinstance(v, bool), "true or false"),
}
_REQUIRED = ("layer_def", "data_shape", "label_names", "data_mean", "data_std")


def validate_state(state, path: str):
    """DataError naming the file and the key when a checkpoint's `__state__` is not a convnet run state."""
    bad = "the file is damaged or not a convnet checkpoint; pick another checkpoint in the run directory"
    if not isinstance(state, dict):
        raise DataError(f"{path}: its __state__ holds a JSON {type(state).__name__}, not the mapping of a run "
                        f"state; {bad}")
    for key in _REQUIRED:
        if key not in state:
            raise DataError(f"{path}: its __state__ has no '{key}'; {bad}")
    for key, (test, what) in _STATE_KEYS.items():
        if key in state and not test(state[key]):
            shown = json.dumps(state[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise DataError(f"{path}: __state__ '{key}' should be {what}, found {shown}; {bad}")
    n = 1
    for v in state["data_shape"]:
        n *= v
    for key in ("data_mean", "data_std"):
        if len(state[key]) not in (0, n):
            raise DataError(f"{path}: __state__ '{key}' holds {len(state[key])} values for data_shape "
                            f"{state['data_shape']} ({n}); {bad}")


def check_arrays_finite(arrays: dict, path: str):
    """DataError naming the arrays that hold NaN or inf (a net trained into NaN predicts nothing useful)."""
    bad = [k for k, a in arrays.items() if a.dtype.kind == "f" and a.size and not np.isfinite(a).all()]
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise DataError(f"{path}: the arrays {shown} hold NaN or inf values; this checkpoint cannot predict or "
                        "train; use an earlier checkpoint of the run (convnet info RUN lists them)")


def read_state(path: str) -> dict | None:
    """The `__state__` of a checkpoint without reading its arrays (one member of the zip), or None when the
    file is not a readable checkpoint."""
    try:
        with zipfile.ZipFile(path) as z, z.open("__state__.npy") as f:
            state = json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, KeyError, RecursionError):
        return None
    return state if isinstance(state, dict) else None


def _progress(state) -> tuple | None:
    """How far into its run a checkpoint's state is: (batch files done, minibatches of the next one done)."""
    if state is None:
        return None
    done, mini = state.get("batches_done"), state.get("minibatch", 0)
    if not (_is_int(done) and _is_int(mini)):
        return None
    return done, mini


def list_checkpoints(run_dir: str) -> list:
    """[(epoch, batch, path)] of the numbered checkpoints, oldest first.

    The order is the run's own: the epoch in the name, then, within an epoch (whose batch files are trained
    in a shuffled order, so the batch number in the name says nothing), the progress recorded in each
    file's __state__. File times never count: a copy, a restore or a clock set wrong changes them. A file
    whose state cannot be read sorts first in its epoch."""
    found = []
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    for n in names:
        m = _NAME.match(n)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), os.path.join(run_dir, n)))
    per_epoch = {}
    for e, _, _ in found:
        per_epoch[e] = per_epoch.get(e, 0) + 1

    def key(t):
        e, b, p = t
        # one file in its epoch needs no state read (a long run's history makes every state large)
        progress = _progress(read_state(p)) if per_epoch[e] > 1 else (0, 0)
        return (e, progress is not None, progress or (0, 0), b, os.path.basename(p))

    return sorted(found, key=key)


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
        runs = _run_dirs(path)
        if runs:   # a --save-path: the run directories are one level down
            more = f" (or one of its {len(runs)} runs)" if len(runs) > 1 else ""
            raise DataError(f"{path}: holds run directories, not checkpoints; give the run: "
                            f"{os.path.join(path, runs[-1])}{more}")
        raise DataError(f"{path}: no checkpoint in this folder (expected <epoch>.<batch>.npz or best.npz); "
                        f"give a run directory made by 'convnet train'")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such checkpoint or run directory")
    return path


def _run_dirs(folder: str) -> list:
    """The names of the run directories (folders holding a checkpoint) in `folder`, newest name last."""
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except OSError:
        return []
    return [n for n in names if os.path.isdir(os.path.join(folder, n))
            and (newest_checkpoint(os.path.join(folder, n)) or os.path.exists(os.path.join(folder, n, "best.npz")))]


def prune_checkpoints(run_dir: str, keep: int | None, written: str | None = None):
    """Keep the newest `keep` numbered checkpoints (best.npz is separate and always kept) and the one just
    `written` (when a resume from an earlier checkpoint left later ones of the first attempt, those count as
    newer until the run passes them)."""
    if not keep or keep <= 0:
        return
    cps = list_checkpoints(run_dir)
    written = os.path.abspath(written) if written else None
    for _, _, p in cps[:-keep]:
        if os.path.abspath(p) == written:
            continue
        try:
            os.unlink(p)
        except OSError:
            pass
