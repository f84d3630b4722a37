"""Melody statistics against melodies whose answers are known by construction."""

import numpy as np
import pytest

from music_attn.music.theory import estimate_key, in_key_share, key_name, pitch_range, repetition

C_MAJOR_TUNE = [60, 62, 64, 65, 67, 65, 64, 62, 60, 64, 67, 72, 67, 64, 60]


@pytest.mark.parametrize("shift", [0, 2, 7, -3])
def test_a_major_tune_is_found_in_its_key_whatever_the_transposition(shift):
    tonic, mode = estimate_key(np.array(C_MAJOR_TUNE) + shift)
    assert (tonic, mode) == (shift % 12, "major")


def test_a_harmonic_minor_tune_is_minor():
    a_minor = [57, 59, 60, 62, 64, 65, 68, 69, 64, 60, 57, 64, 68, 69, 57]
    assert key_name(estimate_key(a_minor)) == "A minor"


def test_in_key_share_counts_chromatic_notes():
    pitches = [60, 61, 62, 63, 64]  # C C# D Eb E in C major: C, D, E are in
    assert in_key_share(pitches, (0, "major")) == pytest.approx(3 / 5)
    assert in_key_share(pitches, (0, "minor")) == pytest.approx(3 / 5)  # C D Eb


def test_range_and_repetition_by_hand():
    assert pitch_range([60, 72, 55]) == 17
    motif = [60, 62, 64, 60]  # intervals +2 +2 -4
    melody = motif * 3  # intervals: +2 +2 -4 0 +2 +2 -4 0 +2 +2 -4 (11 intervals, 8 four-grams)
    # four-grams at 0..3 are new (the 4 rotations), 4..7 repeat them
    assert repetition(melody) == pytest.approx(4 / 8)
    assert repetition([60, 61, 63, 66, 70, 75, 81]) == 0.0
