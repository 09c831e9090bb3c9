"""`convnet info PATH`: what a batch folder, a batch file, a run directory, a checkpoint or an ONNX model
holds, as one dict (printed as text by text.py, or as JSON), reading no more of it than it must.

    info = describe("runs/ConvNet__2026-11-23_10.00.00")   # {'kind': 'run', 'layers': [...], ...}
    print(render(info))

What PATH is, is decided by what is there, not by its name alone: a folder with batches.meta is a batch
folder, a folder with checkpoints (or train_log.jsonl) a run directory; a file is a checkpoint when it is a
zip (.npz), an ONNX model when it is named .onnx or starts as an ONNX protobuf does, a batch file or meta
when it is a pickle of one. Anything else (a FIFO or device too, never opened) is one DataError line (exit 2).
"""
from __future__ import annotations

import os
import re

from convnet_cli.data.batch_files import META
from convnet_cli.errors import DataError
from convnet_cli.fileio import special_file
from convnet_cli.info.text import render

_CHECKPOINT = re.compile(r"^(\d+\.\d+|best)\.npz$")
_BATCH = re.compile(r"^(data_batch_\d+|test_batch)$")
_RUN_PREFIX = "ConvNet__"
_WHAT = ("expected a batch folder (with batches.meta), a run directory or checkpoint (.npz) made by convnet "
         "train, or an ONNX model (.onnx)")


def _magic(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except PermissionError:
        raise DataError(f"{path}: permission denied; check the file's permissions") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def kind_of(path: str) -> str:
    """'batches', 'batch_file', 'meta', 'run', 'checkpoint' or 'onnx'; DataError naming what is expected."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder; {_WHAT}")
    if os.path.isdir(path):
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None
        if META in names or any(_BATCH.match(n) for n in names):
            return "batches"  # without batches.meta, BatchSet says that it is missing
        if any(_CHECKPOINT.match(n) for n in names) or "train_log.jsonl" in names:
            return "run"
        runs = sorted(n for n in names if n.startswith(_RUN_PREFIX) and os.path.isdir(os.path.join(path, n)))
        if runs:
            raise DataError(f"{path}: holds {len(runs)} run director{'y' if len(runs) == 1 else 'ies'}, not one run; "
                            f"give one of them, e.g. convnet info {os.path.join(path, runs[-1])}")
        raise DataError(f"{path}: nothing convnet can describe in this folder; {_WHAT}")
    special = special_file(path)
    if special:   # opening a FIFO blocks until a writer comes, a device reads without end
        raise DataError(f"{path}: is {special}, not a file convnet can describe; {_WHAT}")
    head = _magic(path)
    if not head:
        raise DataError(f"{path}: empty file; {_WHAT}")
    name = os.path.basename(path)
    if head.startswith(b"PK"):
        return "checkpoint"
    if name.lower().endswith(".onnx"):
        return "onnx"
    if head[:1] == b"\x80" or name == META or _BATCH.match(name):
        from convnet_cli.info.batches import looks_like_batch_pickle

        if name == META:
            return "meta"
        what = looks_like_batch_pickle(path)
        if what == "meta":
            return "meta"
        if what == "batch" or _BATCH.match(name):
            return "batch_file"
        raise DataError(f"{path}: a pickle, but neither a batch file nor a batches.meta; {_WHAT}")
    if head[:1] == b"\x08":  # field 1 (ir_version) as ONNX writers put it first
        return "onnx"
    if name.lower().endswith(".npz"):
        raise DataError(f"{path}: not a readable convnet checkpoint (not a zip file: truncated or damaged); "
                        "pick another checkpoint of the run")
    raise DataError(f"{path}: not a file convnet can describe; {_WHAT}")


def describe(path, progress: bool = False) -> dict:
    """The dict `convnet info PATH` prints. progress: a progress bar on a terminal for big batch folders."""
    path = os.fspath(path)
    kind = kind_of(path)
    if kind in ("batches", "meta"):
        from convnet_cli.info.batches import describe_batch_folder

        folder = path if kind == "batches" else (os.path.dirname(path) or ".")
        return describe_batch_folder(folder, progress=progress)
    if kind == "batch_file":
        from convnet_cli.info.batches import describe_batch_file

        return describe_batch_file(path)
    if kind in ("run", "checkpoint"):
        from convnet_cli.info.runs import describe_run

        return describe_run(path)
    from convnet_cli.info.onnx_model import describe_onnx

    return describe_onnx(path)


__all__ = ["describe", "kind_of", "render"]
