"""music_attn.continue_midi: the library call behind ``music-attn generate --prompt``."""

import numpy as np
import pytest

import music_attn
from music_attn import continue_midi, read_midi
from music_attn.music.continuation import MARKER_TEXT


@pytest.fixture(scope="module")
def prompt():
    return str(next(p for p in music_attn.shipped_melodies() if p.name == "the-minstrel-boy.mid"))


@pytest.fixture(scope="module")
def continued(prompt):
    return continue_midi(prompt, bars=2, seed=1)


def test_the_prompts_notes_come_first_exactly_and_the_new_ones_after_its_last_onset(prompt, continued):
    before = read_midi(prompt, include_drums=True).notes
    n = len(before)
    assert np.array_equal(continued.notes[:n], before)
    new = continued.new_notes
    assert len(new) == continued.added.n_notes > 0
    assert new["start_tick"].min() >= before["start_tick"].max()
    assert continued.generated.prompt_length < len(continued.generated.ids)


def test_the_written_file_reads_back_as_the_prompt_plus_the_new_notes(prompt, continued, tmp_path):
    out = tmp_path / "out.mid"
    continued.write(out)
    again = read_midi(out, include_drums=True)
    assert len(again.notes) == len(continued.notes)
    old = np.isin(again.notes["track"], continued.added.tracks, invert=True)
    assert np.array_equal(again.notes[old], continued.prompt.notes)
    assert any(text == MARKER_TEXT for _, _, kind, text in again.texts if kind == "marker")


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_notes(prompt, continued, tmp_path):
    a, b, c = tmp_path / "a.mid", tmp_path / "b.mid", tmp_path / "c.mid"
    continued.write(a)
    continue_midi(prompt, bars=2, seed=1).write(b)
    continue_midi(prompt, bars=2, seed=2).write(c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_prompt_bars_reads_only_those_bars_and_continues_after_them(prompt):
    part = continue_midi(prompt, bars=1, prompt_bars=(1, 4), seed=0)
    whole = read_midi(prompt, include_drums=True)
    assert 0 < len(part.read.notes) < len(whole.notes)
    last = part.read.notes["start_tick"].max()
    assert part.new_notes["start_tick"].min() >= last
    with pytest.raises(ValueError, match="prompt_bars"):
        continue_midi(prompt, prompt_bars=(3, 2))


def test_num_samples_gives_what_single_runs_with_seed_plus_i_give(prompt, tmp_path):
    both = continue_midi(prompt, bars=1, seed=5, num_samples=2)
    second = continue_midi(prompt, bars=1, seed=6)
    assert np.array_equal(both[1].generated.ids, second.generated.ids)
