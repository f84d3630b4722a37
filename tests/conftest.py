"""Shared test references and fixtures.

MIDI: the factories and the independent reference reader live in
``tests/midi_factory.py`` (``from midi_factory import track, note_events,
mido_reference, ...``): files are built with mido from absolute ticks and
read back message by message with mido, against which the project's byte
scanner, tokenizers and writer are checked.  This conftest puts ``tests/`` on
the import path and offers the ``midi_path`` fixture.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # midi_factory, wherever pytest is started

import midi_factory  # noqa: E402


@pytest.fixture
def midi_path(tmp_path):
    """Save a mido.MidiFile under tmp_path: ``midi_path(mid, "name.mid") -> Path``."""

    def save(mid, name="tune.mid"):
        return midi_factory.save(mid, tmp_path / name)

    return save
