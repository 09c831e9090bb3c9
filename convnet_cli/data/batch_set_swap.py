"""Replacing a whole batch set atomically, and one writer per batch folder (README).

A batch set is many files (data_batch_1..K, batches.meta, skipped.txt); no single rename replaces them all.
So `convnet make-batches` writes the new set into a hidden staging folder inside BATCH_DIR and then:

  1. commits: writes BATCH_DIR/.make-batches.swap (temp + fsync + rename), naming the staging folder and the
     new set's files. Before this point BATCH_DIR holds the old set, untouched;
  2. moves the new files into BATCH_DIR one rename at a time (batches.meta last) and removes the old batch
     files the new set lacks;
  3. removes the swap file, then the staging folder.

A kill during step 2 leaves some new files in BATCH_DIR and the rest in the staging folder; the swap file says
which set is current. Readers (`BatchSet`) then read each file of the new set from wherever it is now
(`pending_swap`), so they see the complete new set at every moment; the next make-batches (or `recover`)
finishes the moves. A kill before step 1 leaves the old set and a stale staging folder, which the next
make-batches removes.

`BatchDirLock`: an exclusive, non-blocking `flock` on BATCH_DIR/.make-batches.lock, held from before the
existing files are checked until the new set is installed (then removed): a second make-batches into the same folder fails
at once with a one-line error instead of silently replacing the first one's set.
"""
from __future__ import annotations

import json
import os
import re
import shutil

from convnet_cli.errors import DataError
from convnet_cli.fileio import fsync_dir

SWAP = ".make-batches.swap"
LOCK = ".make-batches.lock"
STAGING_PREFIX = ".make-batches-"
_BATCH_FILE = re.compile(r"^data_batch_\d+$")
META = "batches.meta"


def _replace(src, dst):
    """os.replace; one name so that tests can stop a swap between any two steps."""
    os.replace(src, dst)


def _remove(path):
    os.remove(path)


class BatchDirLock:
    """Exclusive lock on a batch folder (see the module docstring), or on another folder one command at a
    time writes into (detect's OUT_DIR: its own lock file `name`, the `holder` and `fix` its message names).
    DataError when another process holds it."""

    def __init__(self, batch_dir, name=LOCK, holder="convnet make-batches",
                 fix="wait for it to finish, or choose another BATCH_DIR"):
        self.batch_dir = os.fspath(batch_dir)
        self.path = os.path.join(self.batch_dir, name)
        self.fd = None
        try:
            import fcntl
        except ImportError:   # Windows: no flock; one writer per folder is then the user's to ensure
            return
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise DataError(f"{self.batch_dir}: cannot create the lock file {name} ({exc.strerror or exc}); "
                                "check that the folder is writable") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = _read_pid(fd)
                os.close(fd)
                raise DataError(f"{self.batch_dir}: another {holder}{pid} is writing into this folder; {fix}") from None
            # the file we locked must still be the one at the path (a remover may have unlinked it meanwhile)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                return
            os.close(fd)
        raise DataError(f"{self.batch_dir}: could not lock the folder (its lock file keeps changing); try again")

    def release(self):
        """Remove the lock file and drop the lock. Safe against a waiter that opened the file before the
        unlink: it finds the path no longer names the file it locked, and tries again."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)   # closing drops the flock
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _read_pid(fd) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (process {text})" if text.isdigit() else ""


def _read_swap(batch_dir):
    """The pending swap's record {staging, files} or None."""
    path = os.path.join(batch_dir, SWAP)
    try:
        with open(path, "r", encoding="utf-8") as f:
            rec = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None   # a torn swap file cannot exist (it is renamed into place); unreadable: as if absent
    if not isinstance(rec, dict) or not isinstance(rec.get("staging"), str) or not isinstance(rec.get("files"), list):
        return None
    if os.sep in rec["staging"] or not rec["staging"].startswith(STAGING_PREFIX):
        return None
    return rec


def pending_swap(batch_dir):
    """For readers: None when no swap is in progress; else {file name: path} of every file of the new set,
    in the staging folder where it has not been moved yet, else in BATCH_DIR."""
    rec = _read_swap(os.fspath(batch_dir))
    if rec is None:
        return None
    staging = os.path.join(batch_dir, rec["staging"])
    out = {}
    for name in rec["files"]:
        name = str(name)
        staged = os.path.join(staging, name)
        out[name] = staged if os.path.exists(staged) else os.path.join(batch_dir, name)
    return out


def install_set(staging, batch_dir, files):
    """Replace the set in `batch_dir` by `files` (names in `staging`), as the module docstring says.

    DataError when a move fails for another reason than a kill (the swap is then finished by the next run)."""
    batch_dir = os.fspath(batch_dir)
    order = [n for n in files if n != META] + [n for n in files if n == META]
    rec = {"staging": os.path.basename(os.fspath(staging)), "files": order}
    tmp = os.path.join(batch_dir, SWAP + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, os.path.join(batch_dir, SWAP))   # the commit point
        fsync_dir(batch_dir)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DataError(f"{batch_dir}: cannot commit the new batch set ({exc.strerror or exc}); the old set is "
                        "untouched") from None
    try:
        _finish(batch_dir, rec)
    except OSError as exc:
        raise DataError(f"{batch_dir}: cannot move the new batch files into place ({exc.strerror or exc}); "
                        "readers see the new set; run make-batches again to finish") from None


def _finish(batch_dir, rec):
    staging = os.path.join(batch_dir, rec["staging"])
    keep = set(rec["files"])
    for name in rec["files"]:
        if name == META:   # last: the old batch files the new set lacks go before the meta moves
            for old in sorted(os.listdir(batch_dir)):
                if _BATCH_FILE.match(old) and old not in keep:
                    _remove(os.path.join(batch_dir, old))
        src = os.path.join(staging, name)
        if os.path.exists(src):
            _replace(src, os.path.join(batch_dir, name))
    fsync_dir(batch_dir)
    _remove(os.path.join(batch_dir, SWAP))
    fsync_dir(batch_dir)
    shutil.rmtree(staging, ignore_errors=True)


def recover(batch_dir, keep=()):
    """Finish a swap a killed make-batches committed, and remove staging folders it left (except `keep`).
    Call with the folder's BatchDirLock held."""
    batch_dir = os.fspath(batch_dir)
    if not os.path.isdir(batch_dir):
        return
    rec = _read_swap(batch_dir)
    if rec is not None:
        try:
            _finish(batch_dir, rec)
        except OSError as exc:
            raise DataError(f"{batch_dir}: cannot finish the batch set an interrupted make-batches left "
                            f"({exc.strerror or exc}); check the folder's permissions") from None
    elif os.path.exists(os.path.join(batch_dir, SWAP)):
        try:
            os.remove(os.path.join(batch_dir, SWAP))   # unreadable: never committed a readable set
        except OSError:
            pass
    keep = {os.path.basename(os.fspath(k)) for k in keep}
    for name in os.listdir(batch_dir):
        if (name.startswith(STAGING_PREFIX) and name not in keep and name not in (SWAP, LOCK)
                and os.path.isdir(os.path.join(batch_dir, name))):
            shutil.rmtree(os.path.join(batch_dir, name), ignore_errors=True)
    try:
        os.remove(os.path.join(batch_dir, SWAP + ".tmp"))
    except OSError:
        pass
