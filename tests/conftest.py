"""Shared references for the tests (add to this file; do not replace what is here).

MIDI: the factories and the independent reference reader live in
``tests/midi_factory.py`` (``from midi_factory import track, note_events,
mido_reference, ...``): files are built with mido from absolute ticks and
read back message by message with mido, against which the project's byte
scanner, tokenizers and writer are checked.  This conftest puts ``tests/`` on
the import path and offers the ``midi_path`` fixture.

Attention: ``loop_note_attention``, the float64 loop reference of the token
-> note rule.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # midi_factory, wherever pytest is started

import midi_factory  # noqa: E402


@pytest.fixture
def midi_path(tmp_path):
    """Save a mido.MidiFile under tmp_path: ``midi_path(mid, "name.mid") -> Path``."""

    def save(mid, name="tune.mid"):
        return midi_factory.save(mid, tmp_path / name)

    return save


def loop_note_attention(att, labels, n_notes):
    """Float64 Python-loop reference of the token -> note rule.

    att (L, H, T, T) dense attention, labels (T,) note of each token (-1 none) ->
    note attention (L, H, N, N) and structure share (L, H, N): for note i, the mean over
    its tokens t of the summed weight on the tokens of note j (on tokens of no note).
    """
    att = np.asarray(att, dtype=np.float64)
    labels = list(np.asarray(labels).tolist())
    L, H, T, _ = att.shape
    notes = np.zeros((L, H, n_notes, n_notes))
    structure = np.zeros((L, H, n_notes))
    for layer in range(L):
        for head in range(H):
            for i in range(n_notes):
                q = [t for t in range(T) if labels[t] == i]
                for t in q:
                    for s in range(T):
                        if labels[s] >= 0:
                            notes[layer, head, i, labels[s]] += att[layer, head, t, s] / len(q)
                        else:
                            structure[layer, head, i] += att[layer, head, t, s] / len(q)
    return notes, structure
