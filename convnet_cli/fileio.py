"""Files the tool writes and reads, in one place.

- `atomic_write(path, write)`: every file convnet writes goes through it. `write(fileobj)` fills a temp file
  beside `path` (binary mode); it is flushed, fsynced and renamed over `path`, so a reader sees the old file
  or the whole new one, never a torn one. On failure the temp file is removed, whatever was at `path` stays,
  and a DataError names the path ('disk full' for ENOSPC/EDQUOT).
- `write_text_atomic`, `write_pickle_atomic`: the two common cases.
- `make_out_dir(folder, flag)`: an output folder made, or a one-line error naming it and the fix.
- `open_error(path, exc, what, fix)`: the one ladder from an exception raised while opening or reading a
  user's file to the one-line error that says what is wrong with it (not found, a folder, permission
  denied, not UTF-8, any other OS error).
- `special_file(path)`: what a path is when it is neither a regular file nor a folder (a FIFO, a device):
  opening one can block forever or read without end, so readers ask first and refuse it, naming it.
"""
from __future__ import annotations

import errno
import os
import pickle
import secrets
import stat

from convnet_cli.errors import DataError

PICKLE_PROTOCOL = 5  # arrays come back as views of one bytearray: reading a batch costs one copy, not two


def fsync_dir(folder):
    """Flush a folder's entries (a rename into it) to disk; a no-op where the OS does not allow it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(path, exc) -> DataError:
    """The DataError for an OSError while writing `path`."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return DataError(f"{path}: disk full while writing ({exc.strerror or exc}); free some space and run again "
                         "(the file was not written; nothing already there was replaced)")
    return DataError(f"{path}: cannot write ({getattr(exc, 'strerror', None) or exc}); "
                     "nothing already there was replaced")


def atomic_write(path, write, on_error=write_error):
    """Write through `write(fileobj)` to a temp file beside `path`, fsync, then rename over `path`.

    on_error(path, OSError) -> the exception to raise instead (default: `write_error`'s DataError).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        # os.open with 0o666 lets the umask decide the permissions, as a plain open() would
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(folder)
    except OSError as exc:
        raise on_error(path, exc) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def write_pickle_atomic(path, obj):
    """Pickle `obj` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=PICKLE_PROTOCOL))


def copy_atomic(src, path):
    """Copy the file `src` to `path` atomically (see `atomic_write`); errors name `path`."""
    import shutil

    def write(f):
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, f, 1 << 20)

    atomic_write(path, write)


def check_out_path(path, flag: str, error=DataError):
    """A one-line `error` when `path` cannot be the file a command writes: a folder, a folder that does
    not exist, or one this user cannot write into."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        return error(f"{flag} {path}: is a folder; give a file name (e.g. {os.path.join(path, 'preds.csv')})")
    if not os.path.isdir(folder):
        return error(f"{flag} {path}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        return error(f"{flag} {path}: cannot write into {folder} (permission denied); choose another path")
    return None


def make_out_dir(folder, flag: str, error=None):
    """Create the output folder `folder` (and its parents) for the flag `flag`; a one-line `error` (default
    ConfigError) naming the folder and the fix when it cannot be made or written into (a read-only file
    system, no permission, a file in the way)."""
    from convnet_cli.errors import ConfigError

    error = error or ConfigError
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise error(f"{flag} {folder}: is a file, not a folder; give a folder (or another name)") from None
    except OSError as exc:
        raise error(f"{flag} {folder}: cannot create the folder ({exc.strerror or exc}); give an {flag} on a "
                    "writable disk") from None
    if not os.access(folder, os.W_OK):
        why = "read-only file system" if _read_only(folder) else "permission denied"
        raise error(f"{flag} {folder}: cannot write into the folder ({why}); give an {flag} on a writable disk")
    return folder


def _read_only(folder) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):
        return False


def write_text_atomic(path, text: str):
    """Write UTF-8 `text` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def open_error(path, exc, name: str, should_be: str, fix: str = "check the path", error=DataError):
    """The one-line error (an `error`) for `exc`, an OSError or UnicodeDecodeError raised while opening or
    reading the user's file `path`.

    name: what the file is ('layer definition file', 'labels file'); should_be: what it must be, said when
    it is a folder or not text ('--labels must be a CSV file'); fix: what to check when it is missing.
    """
    if isinstance(exc, FileNotFoundError):
        return error(f"{path}: {name} not found; {fix}")
    if isinstance(exc, IsADirectoryError):
        return error(f"{path}: is a folder; {should_be}")
    if isinstance(exc, PermissionError):
        return error(f"{path}: permission denied; check the file's permissions")
    if isinstance(exc, UnicodeDecodeError):
        return error(f"{path}: is not UTF-8 text; {should_be}")
    return error(f"{path}: cannot read {name} ({getattr(exc, 'strerror', None) or exc})")


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))


def special_file(path) -> str | None:
    """'a FIFO (named pipe)', 'a socket', 'a character device' or 'a block device' when `path` (links followed)
    is one; None for a regular file, a folder, or a path that cannot be looked at (opening it then says why)."""
    try:
        return special_mode(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def special_mode(mode) -> str | None:
    """special_file's answer for an st_mode already at hand (an fstat of an open file)."""
    return next((what for test, what in _SPECIAL if test(mode)), None)
