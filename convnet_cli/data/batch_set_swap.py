"""Replacing a whole batch set atomically, and one writer per batch folder (docs/COMMANDS.md).

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

Names are never followed out of BATCH_DIR: a swap record is taken only when it names a staging folder of the
form mkdtemp gives (a real folder, not a link) and plain file names of a set (data_batch_N, batches.meta,
skipped.txt); the lock, the swap record and its temp file are opened without following a link (O_NOFOLLOW),
and each must be a regular file of one name. Anything else there was not written by make-batches: readers
ignore it, a writer refuses with one line naming it (remove it).

Why not swap the whole folder (build BATCH_DIR beside, two renames) so that readers which do not know the
swap record (cuda-convnet's own data provider) never see a mix either: BATCH_DIR may hold the user's own
files, may be a mount point or the current folder of a shell, and its parent may not be writable; between
the two renames there would be no BATCH_DIR at all, and the lock, inside the folder, would stay with the
old one. A symlink flip changes what the user's BATCH_DIR is. So the record stays, and docs/COMMANDS.md says
when a plain reader can see a mix (after a kill during the moves, until the next make-batches finishes them).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat

from convnet_cli.errors import DataError
from convnet_cli.fileio import fsync_dir, special_mode

SWAP = ".make-batches.swap"
LOCK = ".make-batches.lock"
STAGING_PREFIX = ".make-batches-"
_BATCH_FILE = re.compile(r"^data_batch_\d+$")
_STAGING = re.compile(r"^\.make-batches-[A-Za-z0-9_]+$")   # tempfile.mkdtemp(prefix=STAGING_PREFIX) names
META = "batches.meta"
SKIPPED = "skipped.txt"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)   # a FIFO planted under our name must not block the open


def _replace(src, dst):
    """os.replace; one name so that tests can stop a swap between any two steps."""
    os.replace(src, dst)


def _remove(path):
    os.remove(path)


def _not_ours(path, what, why, writer="convnet make-batches") -> DataError:
    return DataError(f"{path}: {why}; {writer} did not write this {what}: remove it and run again")


class BatchDirLock:
    """Exclusive lock on a batch folder (see the module docstring), or on another folder one command at a
    time writes into (detect's OUT_DIR: its own lock file `name`, the `holder` and `fix` its message names).
    DataError when another process holds it, or when the lock's name is taken by something the command did
    not make (a link, a FIFO, a folder)."""

    def __init__(self, batch_dir, name=LOCK, holder="convnet make-batches",
                 fix="wait for it to finish, or choose another BATCH_DIR"):
        self.batch_dir = os.fspath(batch_dir)
        self.path = os.path.join(self.batch_dir, name)
        self.holder = holder
        self.fd = None
        try:
            import fcntl
        except ImportError:   # Windows: no flock; one writer per folder is then the user's to ensure
            return
        for _ in range(3):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = _read_pid(fd)
                os.close(fd)
                raise DataError(f"{self.batch_dir}: another {holder}{pid} is writing into this folder; {fix}") from None
            # the file we locked must still be the one at the path (a remover may have unlinked it meanwhile)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except OSError:
                same = False
            if same:
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                return
            os.close(fd)
        raise DataError(f"{self.batch_dir}: could not lock the folder (its lock file keeps changing); try again")

    def _open(self):
        """The lock file, created when absent; never through a link (its target would be truncated), never a
        FIFO or device (flock fails on them, and reading one blocks), never a file with other names."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK, 0o666)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(self.path):
                raise _not_ours(self.path, "lock file", "is a symbolic link", self.holder) from None
            if isinstance(exc, IsADirectoryError):
                raise _not_ours(self.path, "lock file", "is a folder", self.holder) from None
            raise DataError(f"{self.batch_dir}: cannot create the lock file {os.path.basename(self.path)} "
                            f"({exc.strerror or exc}); "
                            "check that the folder is writable") from None
        st = os.fstat(fd)
        why = None
        if not stat.S_ISREG(st.st_mode):
            why = f"is {special_mode(st.st_mode) or 'not a regular file'}"
        elif st.st_nlink != 1:
            why = f"has {st.st_nlink} names (a hard link: writing the lock would change the other file)"
        if why:
            os.close(fd)
            raise _not_ours(self.path, "lock file", why, self.holder)
        return fd

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


def _swap_record(batch_dir):
    """(the pending swap's record {staging, files} or None, why the swap file is not one make-batches wrote
    or None)."""
    path = os.path.join(batch_dir, SWAP)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot be looked at ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return None, "is a folder"
    if stat.S_ISLNK(st.st_mode):
        return None, "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return None, f"is {special_mode(st.st_mode) or 'not a regular file'}"
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            rec = json.loads(f.read().decode("utf-8"))
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except ValueError:   # never torn (it is renamed into place): not JSON, so not ours
        return None, "is not JSON"
    if not isinstance(rec, dict) or not isinstance(rec.get("staging"), str) or not isinstance(rec.get("files"), list):
        return None, "lacks the keys staging and files"
    if not _STAGING.match(rec["staging"]):
        return None, f"names the staging folder {rec['staging']!r}, not one of make-batches' ({STAGING_PREFIX}…)"
    bad = next((n for n in rec["files"] if not (isinstance(n, str) and (n in (META, SKIPPED) or _BATCH_FILE.match(n)))),
               None)
    if bad is not None or len(set(rec["files"])) != len(rec["files"]):
        return None, (f"names {bad!r}, not a file of a batch set" if bad is not None else "names a file twice")
    try:
        st = os.lstat(os.path.join(batch_dir, rec["staging"]))
    except FileNotFoundError:
        st = None   # removed by hand: every file of the set is then in BATCH_DIR already
    except OSError as exc:
        return None, f"names the staging folder {rec['staging']}, which cannot be looked at ({exc.strerror or exc})"
    if st is not None and not stat.S_ISDIR(st.st_mode):
        return None, f"names the staging folder {rec['staging']}, which is not a folder (a link or a file)"
    return rec, None


def _read_swap(batch_dir, strict=False):
    """The pending swap's record {staging, files} or None. A swap file make-batches did not write (see the
    module docstring) is None for a reader; with `strict` (a writer, under the lock) a DataError naming it."""
    rec, why = _swap_record(batch_dir)
    if why is not None and strict:
        raise _not_ours(os.path.join(batch_dir, SWAP), "swap record", why)
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
        staged = os.path.join(staging, name)
        out[name] = staged if os.path.exists(staged) else os.path.join(batch_dir, name)
    return out


def committed(batch_dir, staging) -> bool:
    """Whether the swap record names `staging`: its files are then the set readers see, to be kept."""
    rec = _read_swap(os.fspath(batch_dir))
    return rec is not None and rec["staging"] == os.path.basename(os.fspath(staging))


def install_set(staging, batch_dir, files):
    """Replace the set in `batch_dir` by `files` (names in `staging`), as the module docstring says.

    DataError when a move fails for another reason than a kill (the swap is then finished by the next run)."""
    batch_dir = os.fspath(batch_dir)
    order = [n for n in files if n != META] + [n for n in files if n == META]
    rec = {"staging": os.path.basename(os.fspath(staging)), "files": order}
    tmp = os.path.join(batch_dir, SWAP + ".tmp")
    try:
        try:
            os.unlink(tmp)   # a leftover (or a planted link): created anew below, never written through
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
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
        if os.path.lexists(src):
            _replace(src, os.path.join(batch_dir, name))
    fsync_dir(batch_dir)
    _remove(os.path.join(batch_dir, SWAP))
    fsync_dir(batch_dir)
    shutil.rmtree(staging, ignore_errors=True)


def recover(batch_dir, keep=()) -> bool:
    """Finish a swap a killed make-batches committed, and remove staging folders it left (except `keep`).
    Call with the folder's BatchDirLock held. True when it finished a swap; DataError for a swap file
    make-batches did not write (it is left for the user to remove)."""
    batch_dir = os.fspath(batch_dir)
    if not os.path.isdir(batch_dir):
        return False
    rec = _read_swap(batch_dir, strict=True)
    if rec is not None:
        try:
            _finish(batch_dir, rec)
        except OSError as exc:
            raise DataError(f"{batch_dir}: cannot finish the batch set an interrupted make-batches left "
                            f"({exc.strerror or exc}); check the folder's permissions") from None
    keep = {os.path.basename(os.fspath(k)) for k in keep}
    for name in os.listdir(batch_dir):
        path = os.path.join(batch_dir, name)
        if _STAGING.match(name) and name not in keep and _is_real_dir(path):
            shutil.rmtree(path, ignore_errors=True)
    tmp = os.path.join(batch_dir, SWAP + ".tmp")
    if _is_real_dir(tmp):   # the commit would fail only after the whole set is written: say so now
        raise _not_ours(tmp, "temp file", "is a folder")
    try:
        os.remove(tmp)
    except OSError:
        pass
    return rec is not None


def _is_real_dir(path) -> bool:
    """A folder, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def finish_interrupted(batch_dir) -> bool:
    """`recover` under the folder's lock, when a swap file is there (else nothing, and no lock is taken):
    True when it finished the install of a killed make-batches."""
    batch_dir = os.fspath(batch_dir)
    if not os.path.lexists(os.path.join(batch_dir, SWAP)):
        return False
    with BatchDirLock(batch_dir):
        return recover(batch_dir)
