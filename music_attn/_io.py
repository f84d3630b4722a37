"""Safe file I/O: outputs that never destroy anything, inputs that are plain files of sane size.

Every writer of the library goes through :func:`atomic_write` (one file) or
:func:`atomic_outputs` (several files, all or none).  Before anything is
written the output path is checked (:func:`check_output`):

* an output that is one of the inputs (same device and inode) is refused;
* a symlink is written through: its target is replaced and the link kept;
* a directory, FIFO, device or socket is refused with a message saying what it is;
* a read-only file (no write permission bit) is refused unless ``force``
  (``--force`` on the command line): it is then replaced, keeping its bits;
* a name ending in ``/`` names a folder, never a file: refused when no such folder exists;
* a missing folder is an error naming it (folders are never created silently).

Data goes to a temporary file beside the output with a short name,
``.ma-XXXXXXXX.tmp`` (so that any valid output name works), which replaces
the output only once fully written (with the permission bits of the file it
replaces).  While its run is alive a temporary file is held under an
exclusive ``flock``; the next write in that folder removes only temporary
files whose lock it can take, i.e. whose writer is gone (whatever PID
namespace that writer ran in).  Errors name the user's path, never the
temporary file; every ``OSError`` names a file.

Several files are committed as a unit through a journal: a
``.ma-XXXXXXXX.journal`` in each folder written to (locked while its run is
alive) lists every output, its temporary file (by inode) and a hard-link
backup of the file it replaces, before the first rename.  A run killed
between its renames leaves a journal whose lock is free: the next write in
any of those folders rolls the unit back (each output renamed over is given
its old content again, or removed if it is new), so the outputs are the old
set or the new set, never a mix, once anything writes there again.

A folder written whole (a token dataset, :func:`atomic_folder`) is built in a
locked ``.ma-XXXXXXXX.dir`` beside it and renamed into place; the folder it
replaces is first moved aside as ``.ma-XXXXXXXX.old``.  The next write in
that parent folder deletes the temporary folders of dead runs, and puts a
folder moved aside back if a kill came before the new one took its place.

Inputs: :func:`read_input` reads a regular file of bounded size, refusing
directories, FIFOs and devices before opening them (a FIFO would block, a
device could be endless).
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from music_attn.errors import MusicAttnError, OutputError

__all__ = ["atomic_write", "atomic_outputs", "atomic_folder", "check_output", "output_folder", "check_input",
           "read_input", "numbered_outputs", "TEMP_PREFIX"]

TEMP_PREFIX = ".ma-"
_TEMP_NAME = re.compile(r"^\.ma-[A-Za-z0-9_]+\.(tmp|journal)$")
_TEMP_FOLDER = re.compile(r"^\.ma-[A-Za-z0-9_]+\.(dir|old)$")
_RESTORE = ".ma-restore"            # in a folder moved aside: the name it goes back to after a kill
_PENDING = {}        # absolute temp path -> user path, for the temps of open atomic_outputs


# ------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_write(path, mode="wb", *, inputs=(), force=False):
    """Open a temporary file beside ``path``; on success it replaces ``path``.

    If the body raises (or the process is killed) ``path`` keeps its previous
    content and no temporary file is left.  ``path`` is checked first (see
    :func:`check_output`; ``inputs`` are the files it must not be, ``force``
    allows replacing a read-only file).  Inside :func:`atomic_outputs`,
    ``path`` may be one of its temporary paths: it is then written directly
    and committed with the others.

    Yields the open file object.  ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text).
    """
    pending = _PENDING.get(os.path.abspath(path))
    if pending is not None:
        with _open(path, mode, pending) as f:
            yield f
        return
    with atomic_outputs([path], inputs=inputs, force=force) as (tmp,):
        with _open(tmp, mode, path) as f:
            yield f


@contextlib.contextmanager
def atomic_outputs(paths, *, inputs=(), force=False):
    """Write several files all or none: ``with atomic_outputs([a, b]) as (tmp_a, tmp_b):``.

    Every path is checked before anything is written; the body writes the
    temporary paths it is given (directly or through any writer of the library);
    when it returns, every temporary file replaces its output (several files
    through a journal, see the module docstring).  If the body raises, nothing
    is replaced; if one replacement fails, those already made are undone.
    An ``OSError`` of the body that names no file, or a temporary one, is
    raised naming the user's path.
    """
    users = [Path(p) for p in paths]
    targets = [check_output(p, inputs=inputs, force=force) for p in paths]
    _refuse_duplicates(users, targets)
    for folder in dict.fromkeys(t.parent for t in targets):
        _sweep(folder)
    temps = []                                    # (path, locked fd)
    try:
        for user, target in zip(users, targets):
            temps.append(_new_temp(target.parent, user, ".tmp"))
            _PENDING[os.path.abspath(temps[-1][0])] = user
        try:
            yield [Path(t) for t, _ in temps]
        except OSError as exc:
            raise _named(exc, [t for t, _ in temps], users) from None
        _commit([t for t, _ in temps], targets, users)
    finally:
        for tmp, fd in temps:
            _PENDING.pop(os.path.abspath(tmp), None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.close(fd)                          # unlinked first: never an unlocked temporary


@contextlib.contextmanager
def atomic_folder(path):
    """Build a folder whole: ``with atomic_folder(out) as tmp:`` fill ``tmp``; on success it becomes ``out``.

    ``out`` may be new, or an earlier folder that the caller has checked may be
    replaced (it is, whole).  If the body raises or the process is killed,
    ``out`` is as it was and the partial folder is removed (by the next write
    in the parent folder, after a kill).
    """
    out = Path(path)
    parent = out.parent
    _sweep(parent)
    tmp, fd = _new_temp_folder(parent, ".dir", out)
    try:
        yield Path(tmp)
        _swap_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


def _new_temp_folder(parent, suffix, user):
    """(path, fd) of a new folder ``.ma-XXXXXXXX<suffix>`` in ``parent``, held under an exclusive flock."""
    while True:
        try:
            tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=suffix, dir=parent)
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise OutputError(f"{user}: cannot write in {parent} ({exc.strerror})") from None
        if _lock(fd) and _still_named(fd, tmp):
            return tmp, fd
        os.close(fd)


def _swap_folder(tmp, out):
    """Rename ``tmp`` to ``out``; an ``out`` already there is moved aside first (restorable after a kill)."""
    if not out.is_dir():
        os.replace(tmp, out)
        return
    (out / _RESTORE).write_text(out.name, encoding="utf-8")
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)          # the lock moves with the folder: never swept while we run
        old = out.parent / f"{TEMP_PREFIX}{os.urandom(6).hex()}.old"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(fd)


def _sweep_folders(parent, entries):
    """Temporary folders of dead runs: built ones deleted, moved-aside ones put back if still missed."""
    for entry in entries:
        with _stale(entry.path, directory=True) as fd:
            if fd is None:
                continue
            if entry.name.endswith(".old"):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    name = Path(entry.path, _RESTORE).read_text(encoding="utf-8")
                    home = Path(parent, Path(name).name)
                    if name and not home.exists():
                        os.replace(entry.path, home)
                        os.unlink(home / _RESTORE)
                        continue
            shutil.rmtree(entry.path, ignore_errors=True)


def check_output(path, *, inputs=(), force=False):
    """The file that writing ``path`` will replace (its target if a symlink); OutputError if refused."""
    user = Path(path)
    if os.fspath(path).endswith("/") and not user.is_dir():
        raise OutputError(f"{os.fspath(path)}: names a folder (it ends in /) that does not exist; "
                          "create it first, or give a file name")
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
        if not force and _read_only(st, target):
            raise OutputError(f"{user}{link}: is read-only; not replacing it (--force replaces it)")
    return target


def _read_only(st, target):
    """No write permission bit at all, or none for this user (root passes access checks)."""
    return not st.st_mode & 0o222 or not os.access(target, os.W_OK)


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
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create the folder ({exc.strerror})") from None
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


# ------------------------------------------------------------------ temporary files, locked while alive
def _new_temp(folder, user, suffix):
    """(path, fd) of a fresh file ``.ma-XXXXXXXX<suffix>`` in ``folder``, held under an exclusive flock."""
    while True:
        try:
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
        except OSError as exc:
            raise OutputError(f"{user}: cannot write in {Path(user).parent} ({exc.strerror})") from None
        if _lock(fd) and _still_named(fd, tmp):
            return tmp, fd
        os.close(fd)                 # a sweep took it in the instant before the lock: another name


def _lock(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _still_named(fd, path):
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def _sweep(folder):
    """Roll back the stale journals in ``folder``, then delete its stale temporary files.

    Stale means that no process holds the file's lock: its writer is gone.
    """
    try:
        listed = list(os.scandir(folder))
    except OSError:
        return
    entries = [e for e in listed if _TEMP_NAME.match(e.name) and e.is_file(follow_symlinks=False)]
    _sweep_folders(folder, [e for e in listed if _TEMP_FOLDER.match(e.name) and e.is_dir(follow_symlinks=False)])
    entries.sort(key=lambda e: not e.name.endswith(".journal"))      # journals first: they name temps
    for entry in entries:
        with _stale(entry.path) as fd:
            if fd is None:
                continue
            if entry.name.endswith(".journal"):
                _roll_back(fd)
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


@contextlib.contextmanager
def _stale(path, directory=False):
    """Yields an fd of ``path`` locked by us when no live process holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if directory else 0))
    except OSError:
        yield None
        return
    try:
        yield fd if _lock(fd) and _still_named(fd, path) else None
    finally:
        os.close(fd)


def _named(exc, temps, users):
    """``exc`` naming the user's path instead of a temporary file, or naming the outputs when it names none."""
    if exc.filename is not None and os.fspath(exc.filename) not in temps:
        return exc                                                 # about another file the body touched
    if exc.filename is not None:
        return _renamed(exc, users[temps.index(os.fspath(exc.filename))])
    shown = ", ".join(str(u) for u in users[:3]) + (", ..." if len(users) > 3 else "")
    return _renamed(exc, shown)


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


# ------------------------------------------------------------------ commit
def _commit(temps, targets, users):
    """Move every temporary file over its target: one rename, or a journalled unit for several."""
    for tmp, target in zip(temps, targets):
        os.chmod(tmp, _mode_for(target))
    if len(temps) == 1:
        try:
            os.replace(temps[0], targets[0])
        except OSError as exc:
            raise _renamed(exc, users[0]) from None
        return
    journal = _Journal(temps, targets, users)
    try:
        journal.replace_all()
    finally:
        journal.close()


class _Journal:
    """The record that makes several renames one unit (see the module docstring).

    It is written (and locked) in every target folder before the backups and the
    renames; it is removed once they are all made, or all undone.
    """

    def __init__(self, temps, targets, users):
        self.temps, self.targets, self.users = temps, targets, users
        self.backups = [f"{t.parent}/{TEMP_PREFIX}{os.urandom(6).hex()}.bak" if t.exists() else None
                        for t in targets]
        self.files = [_new_temp(folder, users[0], ".journal") for folder in dict.fromkeys(t.parent for t in targets)]
        record = {"entries": [{"target": str(t), "temp": tmp, "inode": os.stat(tmp).st_ino, "backup": b}
                              for tmp, t, b in zip(temps, targets, self.backups)]}
        for path, fd in self.files:
            with open(fd, "w", encoding="utf-8", closefd=False) as f:
                json.dump(record, f)
                f.flush()
                os.fsync(fd)

    def replace_all(self):
        done = []
        try:
            for tmp, target, user, backup in zip(self.temps, self.targets, self.users, self.backups):
                if backup is not None:
                    _link(target, backup, user)
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

    def close(self):
        """Remove the journals (the unit is decided), then the backups."""
        for path, fd in self.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)
        for backup in self.backups:
            if backup:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)


def _link(target, backup, user):
    try:
        os.link(target, backup)
    except OSError as exc:
        raise _renamed(exc, user) from None


def _roll_back(fd):
    """Undo the renames a killed run made (its journal, opened as ``fd``): old content back, new files gone."""
    try:
        with open(fd, encoding="utf-8", closefd=False) as f:
            entries = json.load(f)["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for entry in entries:
        with contextlib.suppress(OSError, KeyError, TypeError):
            if os.path.lexists(entry["temp"]):
                continue                                    # not renamed: the temp sweep removes it
            if os.stat(entry["target"]).st_ino != entry["inode"]:
                continue                                    # not the file this run put there
            if entry["backup"] and os.path.exists(entry["backup"]):
                os.replace(entry["backup"], entry["target"])
            else:
                os.unlink(entry["target"])
    for entry in entries:
        with contextlib.suppress(OSError, KeyError, TypeError):
            if entry["backup"]:
                os.unlink(entry["backup"])


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


def numbered_outputs(template, n):
    """The output paths of a command writing ``n`` samples: ``template`` itself for one, else
    its ``{i}`` filled with 0..n-1 (ValueError when it has no single ``{i}``)."""
    if n == 1:
        return [template]
    if template.count("{i}") != 1 or template.replace("{i}", "").count("{") + template.count("}") > 1:
        raise ValueError(f"--num-samples {n} writes several files: -o needs one '{{i}}' in its name "
                         f"(e.g. out_{{i}}.mid), got {template!r}")
    return [template.replace("{i}", str(i)) for i in range(n)]
