"""Safe file I/O: outputs that never destroy anything, inputs that are plain files of sane size.

Every writer of the library goes through :func:`atomic_write` (one file) or
:func:`atomic_outputs` (several files, all or none).  Before anything is
written the output path is checked (:func:`check_output`):

* an output that is one of the inputs (same device and inode) is refused;
* a symlink is written through: its target is replaced and the link kept;
* a directory, FIFO, device or socket is refused with a message saying what it is;
* a missing folder is an error naming it (folders are never created silently).

Data goes to a temporary file beside the output, named
``.NAME.music-attn-PID-XXXX.tmp``, which replaces the output only once fully
written (with the permission bits of the file it replaces).  A temporary file
whose process is gone (a run that was killed) is removed by the next write in
that folder.  Errors name the user's path, never the temporary file.

Inputs: :func:`read_input` reads a regular file of bounded size, refusing
directories, FIFOs and devices before opening them (a FIFO would block, a
device could be endless).
"""

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from music_attn.errors import MusicAttnError, OutputError

__all__ = ["atomic_write", "atomic_outputs", "check_output", "output_folder", "check_input", "read_input",
           "TEMP_TAG"]

TEMP_TAG = "music-attn"
_TEMP_NAME = re.compile(rf"^\..*\.{TEMP_TAG}-(\d+)-[^.]*\.tmp$")
_PENDING = {}        # absolute temp path -> user path, for the temps of open atomic_outputs


# ------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_write(path, mode="wb", *, inputs=()):
    """Open a temporary file beside ``path``; on success it replaces ``path``.

    If the body raises (or the process is killed) ``path`` keeps its previous
    content and no temporary file is left.  ``path`` is checked first (see
    :func:`check_output`; ``inputs`` are the files it must not be).  Inside
    :func:`atomic_outputs`, ``path`` may be one of its temporary paths: it is
    then written directly and committed with the others.

    Yields the open file object.  ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text).
    """
    pending = _PENDING.get(os.path.abspath(path))
    if pending is not None:
        with _open(path, mode, pending) as f:
            yield f
        return
    with atomic_outputs([path], inputs=inputs) as (tmp,):
        with _open(tmp, mode, path) as f:
            yield f


@contextlib.contextmanager
def atomic_outputs(paths, *, inputs=()):
    """Write several files all or none: ``with atomic_outputs([a, b]) as (tmp_a, tmp_b):``.

    Every path is checked before anything is written; the body writes the
    temporary paths it is given (directly or through any writer of the library);
    when it returns, every temporary file replaces its output.  If the body
    raises, nothing is replaced; if one replacement fails, those already made
    are undone.
    """
    paths = [Path(p) for p in paths]
    targets = [check_output(p, inputs=inputs) for p in paths]
    _refuse_duplicates(paths, targets)
    temps = []
    try:
        for user, target in zip(paths, targets):
            temps.append(_new_temp(target, user))
            _PENDING[os.path.abspath(temps[-1])] = user
        yield [Path(t) for t in temps]
        _commit(temps, targets, paths)
    finally:
        for tmp in temps:
            _PENDING.pop(os.path.abspath(tmp), None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def check_output(path, *, inputs=()):
    """The file that writing ``path`` will replace (its target if a symlink); OutputError if refused."""
    user = Path(path)
    target = Path(os.path.realpath(user))
    link = f" (a link to {target})" if user.is_symlink() else ""
    folder = target.parent
    if not folder.exists():
        raise OutputError(f"{user}{link}: folder {_shown_folder(user, target)} does not exist (create it first)")
    if not folder.is_dir():
        raise OutputError(f"{user}{link}: {folder} is not a folder")
    st = _stat(target, user)
    if st is not None:
        kind = describe(st.st_mode)
        if kind != "a regular file":
            raise OutputError(f"{user}{link}: is {kind}; refusing to write over it")
        for source in inputs:
            if _same_file(st, source):
                raise OutputError(f"{user}: is the input file {source}; write the output to another file")
    return target


def output_folder(path, *, create=False):
    """A folder that a command writes several files into: it may be new, but its parent must exist.

    OutputError if ``path`` is something other than a folder or its parent is
    missing; with ``create`` the folder is made (one level, never a tree).
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder")
    if not folder.exists() and not folder.parent.is_dir():
        raise OutputError(f"{folder}: folder {folder.parent} does not exist (create it first)")
    if create:
        folder.mkdir(exist_ok=True)
    return folder


def _shown_folder(user, target):
    return user.parent if not user.is_symlink() else target.parent


def _stat(target, user):
    try:
        return os.stat(target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"{user}: {exc.strerror}") from None


def _same_file(st, source):
    try:
        other = os.stat(source)
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def _refuse_duplicates(paths, targets):
    seen = {}
    for user, target in zip(paths, targets):
        if target in seen:
            raise OutputError(f"{user}: the same file as the output {seen[target]}; give each output its own name")
        seen[target] = user


def _new_temp(target, user):
    """A fresh temporary file beside ``target`` (stale ones from dead runs removed first)."""
    _remove_stale_temps(target.parent)
    prefix = f".{target.name[:80]}.{TEMP_TAG}-{os.getpid()}-"
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{user}: cannot write in {user.parent} ({exc.strerror})") from None
    os.close(fd)
    return tmp


def _remove_stale_temps(folder):
    """Delete this library's temporary files in ``folder`` whose process no longer runs."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match and entry.is_file(follow_symlinks=False) and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


@contextlib.contextmanager
def _open(tmp, mode, user):
    """Open ``tmp`` for writing; OS errors name the user's path ``user``."""
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.filename not in (None, os.fspath(tmp)):
            raise                       # about another file the body touched
        raise _renamed(exc, user) from None


def _renamed(exc, user):
    """``exc`` naming ``user`` instead of a temporary file."""
    return OSError(exc.errno, exc.strerror or str(exc), str(user))


def _commit(temps, targets, users):
    """Move every temporary file over its target; undo the moves already made if one fails."""
    for tmp, target in zip(temps, targets):
        os.chmod(tmp, _mode_for(target))
    done, backups = [], []
    try:
        for tmp, target, user in zip(temps, targets, users):
            backup = _backup(target) if len(temps) > 1 else None
            backups.append(backup)
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise _renamed(exc, user) from None
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup:
                    os.replace(backup, target)
                else:
                    os.unlink(target)
        raise
    finally:
        for backup in backups:
            if backup:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)


def _backup(target):
    """A hard link to the current ``target`` (to undo its replacement), or None."""
    if not target.exists():
        return None
    backup = f"{target.parent}/.{target.name[:80]}.{TEMP_TAG}-{os.getpid()}-backup.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(backup)
    try:
        os.link(target, backup)
    except OSError:
        return None
    return backup


def _mode_for(target):
    """Permission bits of the file being replaced, else those of a new file under the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ reading
def describe(mode):
    """What a ``st_mode`` is, in words: 'a regular file', 'a directory', 'a FIFO (named pipe)', ..."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_input(path, *, limit=None, what="file", error=MusicAttnError):
    """Stat ``path`` and refuse anything but a regular file of at most ``limit`` bytes.

    FileNotFoundError for a missing file; ``error`` (an exception class) for a
    directory, FIFO, device, an unreadable or too large file.  Nothing is opened.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path)) from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    kind = describe(st.st_mode)
    if kind != "a regular file":
        raise error(f"{path}: is {kind}, not a {what}")
    if limit is not None and st.st_size > limit:
        raise error(f"{path}: {st.st_size / 2**20:.1f} MiB is more than a {what} may be "
                    f"({limit / 2**20:.0f} MiB)")
    return st


def read_input(path, *, limit, what="file", error=MusicAttnError):
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`check_input`)."""
    check_input(path, limit=limit, what=what, error=error)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)            # a file growing while read is still bounded
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise error(f"{path}: more than a {what} may be ({limit / 2**20:.0f} MiB)")
    return data
