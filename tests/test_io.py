"""Safe I/O: outputs written all or nothing, never over an input, a link, a FIFO or a device;
inputs read only when they are regular files of bounded size."""

import errno
import os
import stat
import subprocess
import sys

import pytest

from music_attn import _io
from music_attn._io import atomic_outputs, atomic_write, check_input, read_input
from music_attn.errors import MusicAttnError, OutputError


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("new, half written")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["out.txt"]


def test_written_file_gets_the_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert (tmp_path / "a.bin").read_bytes() == b"x"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755])
def test_a_replaced_file_keeps_its_permission_bits(tmp_path, mode):
    path = tmp_path / "secret.txt"
    path.write_text("old")
    path.chmod(mode)
    with atomic_write(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == mode


def test_output_equal_to_an_input_is_refused_even_under_another_name(tmp_path):
    source = tmp_path / "tune.mid"
    source.write_bytes(b"MThd music")
    os.link(source, tmp_path / "alias.mid")
    for spelling in (source, tmp_path / "alias.mid", tmp_path / "." / "tune.mid"):
        with pytest.raises(OutputError, match="is the input file"):
            with atomic_write(spelling, inputs=[source]) as f:
                f.write(b"<html>")
    assert source.read_bytes() == b"MThd music"
    assert _names(tmp_path) == ["alias.mid", "tune.mid"]


def test_writing_to_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "out.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with atomic_write(link, "w") as f:
        f.write("new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"
    assert _names(tmp_path / "real") == ["out.txt"]


@pytest.mark.parametrize("kind, words", [("fifo", "FIFO"), ("dir", "directory"), ("device", "character device")])
def test_fifo_directory_and_device_outputs_are_refused_and_left_alone(tmp_path, kind, words):
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    elif kind == "dir":
        path = tmp_path / "folder"
        path.mkdir()
    else:
        path = "/dev/null"
    before = os.stat(path)
    with pytest.raises(OutputError, match=words) as info:
        with atomic_write(path) as f:
            f.write(b"x")
    assert str(path) in str(info.value) and ".tmp" not in str(info.value)
    after = os.stat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_missing_folder_is_an_error_naming_it_and_nothing_is_created(tmp_path):
    path = tmp_path / "no" / "such" / "out.mid"
    with pytest.raises(OutputError, match=f"folder {tmp_path / 'no' / 'such'} does not exist"):
        with atomic_write(path) as f:
            f.write(b"x")
    assert _names(tmp_path) == []


def test_an_error_while_writing_names_the_users_path_not_the_temporary(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        with atomic_write(tmp_path / "out.bin") as f:
            f.write(b"x")
    assert info.value.filename == str(tmp_path / "out.bin") and info.value.errno == errno.ENOSPC
    assert _names(tmp_path) == []


def test_temporary_files_have_short_names_so_any_valid_output_name_works(tmp_path):
    name = "\u6f22" * 80 + ".html"                      # 80 CJK characters: 245 bytes of a 255-byte limit
    with atomic_write(tmp_path / name) as f:
        seen = _names(tmp_path)
        f.write(b"x")
    assert len(seen) == 1 and seen[0].startswith(".ma-") and seen[0].endswith(".tmp") and len(seen[0]) < 24
    assert _names(tmp_path) == [name] and (tmp_path / name).read_bytes() == b"x"


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(30)
"""


def test_only_temporaries_whose_lock_is_free_are_swept_whatever_their_pid(tmp_path):
    stale = tmp_path / ".ma-abc123.tmp"                  # a killed run's: nobody holds its lock
    stale.write_bytes(b"half")
    running = tmp_path / ".ma-def456.tmp"                # a live run's, in a PID namespace we cannot see
    live = subprocess.Popen([sys.executable, "-c", _HOLD, str(running)], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "locked\n"
        foreign = tmp_path / ".notes.tmp"
        foreign.write_bytes(b"not ours")
        with atomic_write(tmp_path / "new.mid") as f:
            f.write(b"x")
        assert _names(tmp_path) == sorted(["new.mid", running.name, ".notes.tmp"])
    finally:
        live.kill()
        live.wait()
    with atomic_write(tmp_path / "newer.mid") as f:    # its writer is gone now
        f.write(b"y")
    assert _names(tmp_path) == sorted(["new.mid", "newer.mid", ".notes.tmp"])


def test_several_outputs_are_written_all_or_none(tmp_path):
    a, b = tmp_path / "a.html", tmp_path / "b.json"
    a.write_text("old a")
    with pytest.raises(RuntimeError):
        with atomic_outputs([a, b]) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
            raise RuntimeError("the third output failed")
    assert a.read_text() == "old a" and _names(tmp_path) == ["a.html"]
    with atomic_outputs([a, b]) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert a.read_text() == "new a" and b.read_text() == "new b" and _names(tmp_path) == ["a.html", "b.json"]


def test_a_bad_path_among_several_outputs_is_refused_before_anything_is_written(tmp_path):
    ran = []
    with pytest.raises(OutputError, match="missing"):
        with atomic_outputs([tmp_path / "a.html", tmp_path / "missing" / "b.json"]):
            ran.append(True)
    assert ran == [] and _names(tmp_path) == []


def test_a_failed_replacement_undoes_the_ones_already_made(tmp_path, monkeypatch):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    real_replace, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError) as info:
        with atomic_outputs([a, b]) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
    monkeypatch.setattr(os, "replace", real_replace)
    assert info.value.filename == str(b)
    assert a.read_text() == "old a" and _names(tmp_path) == ["a.txt"]


def test_library_writers_write_into_a_transaction_and_commit_with_it(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_outputs([tmp_path / "x.txt"]) as (tx,):
            with atomic_write(tx, "w") as f:
                f.write("inside")
            raise RuntimeError("abort")
    assert _names(tmp_path) == []
    with atomic_outputs([tmp_path / "x.txt"]) as (tx,):
        with atomic_write(tx, "w") as f:
            f.write("inside")
    assert (tmp_path / "x.txt").read_text() == "inside" and _names(tmp_path) == ["x.txt"]


def test_two_outputs_naming_the_same_file_are_refused(tmp_path):
    with pytest.raises(OutputError, match="same file"):
        with atomic_outputs([tmp_path / "a", tmp_path / "." / "a"]):
            pass


@pytest.mark.parametrize("kind, words", [("fifo", "FIFO"), ("dir", "directory"), ("zero", "character device")])
def test_inputs_that_are_not_regular_files_are_refused_without_opening_them(tmp_path, kind, words):
    path = {"fifo": tmp_path / "pipe", "dir": tmp_path, "zero": "/dev/zero"}[kind]
    if kind == "fifo":
        os.mkfifo(path)                        # opening it for reading would block forever
    with pytest.raises(MusicAttnError, match=f"{path}: is a {words}"):
        read_input(path, limit=100, what="token file")


def test_inputs_larger_than_the_limit_are_refused_and_missing_ones_are_not_found(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b"x" * 101)
    with pytest.raises(MusicAttnError, match="big.json.*more than a token file may be"):
        read_input(path, limit=100, what="token file")
    assert read_input(path, limit=101) == b"x" * 101
    with pytest.raises(FileNotFoundError):
        check_input(tmp_path / "absent.json")
