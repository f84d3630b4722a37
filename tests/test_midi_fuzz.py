"""A few hundred mutated MIDI files through both tokenizers: only MidiError (naming the file) may escape.

Mutations of valid files (type 0, type 1 with tempo and metre, running status):
truncations, byte flips, random byte runs, corrupted header fields, lying chunk
lengths, and chunks repeated or dropped.  Whatever is readable must also encode
and decode.
"""

import struct

import numpy as np
import pytest

from midi_factory import midi_file, note_events, random_tune, track
from music_attn.errors import MidiError
from music_attn.music.tokenizers import PerformanceTokenizer, RemiTokenizer

TOKENIZERS = (RemiTokenizer(), PerformanceTokenizer())


def _seeds(tmp_path):
    rng = np.random.default_rng(0)
    tune, _ = random_tune(rng, metres=((3, 4), (6, 8)), n_bars=4, voices=2)
    single = midi_file(track(note_events([(60, 0, 240, 80), (62, 240, 480, 90)])), type=0)
    seeds = []
    for i, mid in enumerate((tune, single)):
        mid.save(str(tmp_path / f"seed{i}.mid"))
        seeds.append((tmp_path / f"seed{i}.mid").read_bytes())
    return seeds


def _chunk_offsets(data):
    offsets, at = [], 14
    while at + 8 <= len(data):
        offsets.append(at)
        at += 8 + struct.unpack(">L", data[at + 4 : at + 8])[0]
    return offsets


def _mutate(data, rng):
    data = bytearray(data)
    kind = int(rng.integers(7))
    if kind == 0:  # truncate
        return bytes(data[: int(rng.integers(0, len(data)))])
    if kind == 1:  # flip a few bytes
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            data[i] = int(rng.integers(256))
    elif kind == 2:  # overwrite a run with random bytes
        start = int(rng.integers(0, len(data)))
        data[start : start + 16] = rng.bytes(16)
    elif kind == 3:  # header fields: format, track count, division
        field = int(rng.choice([8, 10, 12]))
        data[field : field + 2] = rng.bytes(2)
    elif kind == 4:  # a chunk length that lies
        at = int(rng.choice(_chunk_offsets(bytes(data))))
        length = struct.unpack(">L", data[at + 4 : at + 8])[0]
        data[at + 4 : at + 8] = struct.pack(">L", max(0, length + int(rng.integers(-20, 20))))
    elif kind == 5:  # a chunk repeated or dropped
        at = _chunk_offsets(bytes(data))
        i = int(rng.integers(len(at)))
        end = at[i + 1] if i + 1 < len(at) else len(data)
        piece = bytes(data[at[i] : end])
        data[at[i] : end] = piece * int(rng.integers(0, 3))
    else:  # random bytes inserted into a track
        start = int(rng.integers(14, len(data)))
        data[start:start] = rng.bytes(int(rng.integers(1, 8)))
    return bytes(data)


def test_mutated_files_raise_only_midi_error(tmp_path):
    rng = np.random.default_rng(2024)
    seeds = _seeds(tmp_path)
    outcomes = {"read": 0, "error": 0}
    for case in range(300):
        path = tmp_path / f"case{case:03d}.mid"
        path.write_bytes(_mutate(seeds[case % len(seeds)], rng))
        for tok in TOKENIZERS:
            try:
                seq = tok.encode(path)
            except MidiError as exc:
                assert str(exc).startswith(f"{path}: ")
                outcomes["error"] += 1
                continue
            outcomes["read"] += 1
            assert seq.ids[0] == tok.bos_id and seq.ids[-1] == tok.eos_id
            assert tok.decode(seq.ids).skipped == 0
    # the mutations exercised both outcomes
    assert outcomes["read"] > 50 and outcomes["error"] > 50, outcomes


@pytest.mark.parametrize("size", [1, 4, 13, 14, 22, 100])
def test_random_bytes_after_a_midi_header_raise_only_midi_error_naming_the_file(tmp_path, size):
    """Random chunk bytes: either a MidiError naming the file, or a file that encodes and decodes cleanly."""
    rng = np.random.default_rng(size)
    for i in range(10):
        path = tmp_path / f"r{i}.mid"
        path.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk" + rng.bytes(size))
        try:
            seq = RemiTokenizer().encode(path)
        except MidiError as exc:
            assert str(exc).startswith(f"{path}: ")
            continue
        assert RemiTokenizer().decode(seq.ids).skipped == 0
