"""Hostile inputs to the MIDI reader: bounded time and memory, one MidiError naming the file.

Variable-length numbers longer than the MIDI standard's 4 bytes, inputs that
are not regular files (directory, FIFO, device), inputs over the size limit,
and files with more tracks than a 16-bit index holds.  Then the writer: a
multi-track Score written through mido reads back (with an independent mido
loop) with every note, program, track name, tempo and metre.
"""

import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from midi_factory import ensemble_tune, mido_reference, save, score_notes
from music_attn.errors import MidiError
from music_attn.music.constants import MAX_MIDI_BYTES
from music_attn.music.midi import read_midi

EOT = b"\x00\xff\x2f\x00"
NOTE = b"\x00\x90\x3c\x40\x83\x60\x80\x3c\x00"  # C4 for 480 ticks


def _file(*bodies, fmt=1):
    header = b"MThd" + struct.pack(">LHHh", 6, fmt, len(bodies), 480)
    return header + b"".join(b"MTrk" + struct.pack(">L", len(b)) + b for b in bodies)


def _read_within(path, seconds=20):
    """read_midi(path) in a thread: (result or exception); fails the test if it does not return in time."""
    out = {}

    def run():
        try:
            out["value"] = read_midi(path)
        except Exception as exc:  # the test inspects it
            out["value"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"reading {path} did not return within {seconds} s"
    return out["value"]


@pytest.mark.parametrize("where", ["delta", "meta length", "sysex length"])
@pytest.mark.parametrize("n_bytes", [5, 20_000, 300_000])
def test_variable_length_number_over_four_bytes_is_a_midi_error_naming_the_file(tmp_path, where, n_bytes):
    run = b"\x81" * (n_bytes - 1) + b"\x00"  # a number of n_bytes bytes
    body = {"delta": run + b"\x90\x3c\x40", "meta length": b"\x00\xff\x01" + run,
            "sysex length": b"\x00\xf0" + run}[where]
    path = tmp_path / "long.mid"
    path.write_bytes(_file(NOTE + body + EOT))
    error = _read_within(path)
    assert isinstance(error, MidiError) and str(error).startswith(f"{path}: ")
    assert "variable-length number longer than 4 bytes" in str(error)


def test_four_byte_variable_length_number_is_read(tmp_path):
    delta = b"\x81\x80\x80\x00"  # 2^21 ticks
    path = tmp_path / "far.mid"
    path.write_bytes(_file(NOTE + delta + b"\x90\x3e\x40\x83\x60\x80\x3e\x00" + EOT))
    assert read_midi(path).notes["start_tick"].tolist() == [0, 480 + 2**21]


def test_directory_is_refused_as_a_directory(tmp_path):
    with pytest.raises(MidiError, match=f"^{tmp_path}: is a directory, not a MIDI file$"):
        read_midi(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.mid"
    os.mkfifo(fifo)
    error = _read_within(fifo)  # opening a FIFO for reading would block until a writer comes
    assert isinstance(error, MidiError) and str(error) == f"{fifo}: is a FIFO (named pipe), not a MIDI file"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_character_device_is_refused_before_reading(tmp_path):
    error = _read_within(Path("/dev/zero"))  # reading it would never end
    assert isinstance(error, MidiError) and "/dev/zero: is a character device" in str(error)


def test_file_over_the_size_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.mid"
    with open(path, "wb") as f:
        f.write(_file(NOTE + EOT))
        f.truncate(MAX_MIDI_BYTES + 1)  # sparse: no disk used
    with pytest.raises(MidiError, match=f"^{path}: .* MiB is more than a MIDI file may be"):
        read_midi(path)


def test_track_indices_go_past_32767(tmp_path):
    n = 33_000
    bodies = [EOT] * (n - 1) + [NOTE + EOT]
    path = tmp_path / "many.mid"
    path.write_bytes(_file(*bodies))
    score = read_midi(path)
    assert score.notes["track"].tolist() == [n - 1] and len(score.track_names) == n


def test_written_ensemble_reads_back_with_every_note_program_name_tempo_and_metre(tmp_path):
    mid, _ = ensemble_tune(np.random.default_rng(3))
    source = save(mid, tmp_path / "in.mid")
    score = read_midi(source, include_drums=True)
    score.write(tmp_path / "out.mid")
    before, after = mido_reference(source, include_drums=True), mido_reference(tmp_path / "out.mid", include_drums=True)
    assert after["notes"] == before["notes"] == score_notes(score)
    assert after["names"] == before["names"] and set(before["names"].values()) == {"Violin", "Cello", "Piano", "Kit"}
    assert sorted(after["tempos"]) == sorted(before["tempos"]) and len(before["tempos"]) == 7
    assert after["signatures"] == before["signatures"] == [(0, 4, 4), (4 * 4 * 480, 3, 4)]
    assert after["ticks_per_beat"] == 480
