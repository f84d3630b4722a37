"""Continuations that respect form: one line, the next bar line after the prompt bars, a cadence at the end."""

import numpy as np
import pytest

import music_attn
from midi_factory import bars_by_loop
from music_attn import continue_midi
from music_attn.music import features as F
from music_attn.music import rhythm
from music_attn.music.midi import read_midi
from music_attn.music.theory import estimate_key
from music_attn.music.tokenizers import RemiTokenizer
from music_attn.runtime.form import Form, dominant_pitch_classes


@pytest.fixture(scope="module")
def prompt():
    return str(next(p for p in music_attn.shipped_melodies() if p.name == "the-minstrel-boy.mid"))


def primed(tokens, one_line=True):
    tok = RemiTokenizer(velocity_bins=0)
    g = tok.grammar()
    for t in tokens:
        g.advance(tok.token_to_id(t))
    g.one_line = one_line
    return tok, g


def test_one_line_grammar_forbids_a_chord_and_an_onset_before_the_last_note_ends():
    tok, g = primed(["BOS", "Bar", "TimeSig_4/4", "Position_0", "Pitch_60", "Duration_18"])
    allowed = g.allowed()
    assert not allowed[tok.token_to_id("Pitch_64")]                  # no second note at Position_0
    assert not allowed[tok.token_to_id("Position_12")]               # the note lasts to position 18
    assert allowed[tok.token_to_id("Position_18")] and allowed[tok.token_to_id("Bar")]
    _, free = primed(["BOS", "Bar", "TimeSig_4/4", "Position_0", "Pitch_60", "Duration_18"], one_line=False)
    assert free.allowed()[tok.token_to_id("Pitch_64")] and free.allowed()[tok.token_to_id("Position_12")]


def test_one_line_holds_across_the_bar_line():
    tok, g = primed(["BOS", "Bar", "TimeSig_2/4", "Position_12", "Pitch_60", "Duration_24", "Bar"])
    allowed = g.allowed()
    assert not allowed[tok.token_to_id("Position_0")] and allowed[tok.token_to_id("Position_12")]


def test_form_starts_with_a_bar_and_closes_on_the_tonic_held_to_the_bar_end():
    tok, g = primed(["BOS", "Bar", "TimeSig_4/4", "Position_0", "Pitch_64", "Duration_12"], one_line=False)
    form = Form(start_bar=True, ending=(0, "major"))
    first = form.restrict(tok, g, [], 0, 2, g.allowed())
    assert np.flatnonzero(first).tolist() == [tok.bar_id]
    g.advance(tok.bar_id)                                            # the last of 2 bars
    where = form.restrict(tok, g, [1], 2, 2, g.allowed())
    assert np.flatnonzero(where).tolist() == [tok.token_to_id("Position_0")]
    g.advance(tok.token_to_id("Position_0"))
    which = form.restrict(tok, g, [1], 2, 2, g.allowed())
    assert set(tok.pitch_of(np.flatnonzero(which)) % 12) == {0}
    assert all(abs(p - 64) <= 7 for p in tok.pitch_of(np.flatnonzero(which)))
    g.advance(tok.token_to_id("Pitch_60"))
    held = form.restrict(tok, g, [1], 2, 2, g.allowed())
    assert np.flatnonzero(held).tolist() == [tok.token_to_id("Duration_48")]
    g.advance(tok.token_to_id("Duration_48"))
    assert np.flatnonzero(form.restrict(tok, g, [1], 2, 2, g.allowed())).tolist() == [tok.eos_id]


def test_dominant_of_g_major_is_a_d_and_f_sharp():
    assert dominant_pitch_classes((7, "major")) == {9, 2, 6}


def test_prompt_bars_continue_at_the_next_bar_line_one_note_at_a_time(prompt):
    for seed in range(3):
        out = continue_midi(prompt, prompt_bars=(1, 4), bars=4, seed=seed)
        lines = rhythm.bar_starts(out, end_tick=10 ** 6)
        prompt_notes, new = out.prompt.notes, out.new_notes
        assert prompt_notes["start_tick"].max() < lines[4] <= new["start_tick"].min()   # bars 1-4, then 5-
        assert len(read_midi(out.midi).notes) == len(prompt_notes) + len(new)             # only bars 1-4 kept
        assert np.all(new["start_tick"][1:] >= new["end_tick"][:-1])                      # one line
        assert new["start_tick"].max() < lines[8]


def test_end_closes_on_the_tonic_of_the_prompts_key_held_to_the_last_bar_line(prompt):
    out = continue_midi(prompt, prompt_bars=(1, 4), bars=4, seed=3, end=True)
    lines = rhythm.bar_starts(out, end_tick=10 ** 6)
    read = out.read.notes
    tonic, _ = estimate_key(read["pitch"], read["end_tick"] - read["start_tick"])
    last = out.new_notes[-1]
    assert last["pitch"] % 12 == tonic and last["end_tick"] == lines[8] and last["start_tick"] >= lines[7]
    assert out.generated.stop == "eos" and out.generated.bars == 4


def test_overlap_area_is_one_for_one_sample_and_near_zero_for_far_apart_ones():
    a = np.random.default_rng(0).normal(size=200)
    assert F.overlap_area(a, a) == pytest.approx(1.0, abs=1e-6)
    assert F.overlap_area(a, a + 50) < 0.01
    assert 0.3 < F.overlap_area(a, a + 1) < 0.8


def test_bar_repeats_count_bars_equal_note_for_note_to_an_earlier_one():
    contents = [((0, 60, 4),), ((0, 62, 4),), ((0, 60, 4),), (), ((0, 62, 4), (4, 64, 4)), ((0, 62, 4),)]
    assert F.bar_repeats(contents, 2) == (2, 3)                      # bars 3 and 6 repeat, the empty bar is not counted


def test_groove_consistency_is_one_for_the_same_rhythm_in_every_bar():
    from music_attn.music.score import NOTE_DTYPE
    notes = np.zeros(8, NOTE_DTYPE)
    notes["start_tick"] = [0, 240, 480, 960, 1920, 2160, 2400, 2880]
    notes["end_tick"] = notes["start_tick"] + 240
    lines = np.array([0, 1920, 3840])
    assert F.groove_consistency(notes, lines) == 1.0
    notes["start_tick"][-1] = 3000
    assert F.groove_consistency(notes, lines) == pytest.approx(1 - 2 / 48)


def _ids(tok, text):
    return [tok.token_to_id(t) for t in text.split()]


def test_replay_copies_the_notes_of_the_bar_a_phrase_back_and_closes_the_bar():
    tok = RemiTokenizer(velocity_bins=0)
    bars = [f"TimeSig_4/4 Position_0 Pitch_{60 + i} Duration_12 Position_24 Pitch_{70 + i} Duration_24"
            for i in range(6)]
    history = [_ids(tok, b) for b in bars] + [[]]                     # six bars, the seventh just begun
    seen = set()
    for seed in range(40):
        tokens, d = Form(repeat=1.0).replay(tok, history, 3, 8, None, np.random.default_rng(seed))
        expected = _ids(tok, bars[6 - d].replace("TimeSig_4/4 ", "")) + [tok.bar_id]
        assert 1 <= d <= 6 and tokens == expected                     # the notes, no TimeSig, a Bar
        seen.add(d)
    assert 4 in seen and len(seen) > 1                                 # mostly a phrase back, not only
    # a bar after a replayed one replays the bar at the same distance
    tokens, d = Form(repeat=1.0).replay(tok, history, 3, 8, 2, np.random.default_rng(0))
    assert d == 2 and tokens[:3] == _ids(tok, "Position_0 Pitch_64 Duration_12")


def test_replay_passes_over_empty_bars_and_never_runs_without_a_chance_or_a_generator():
    tok = RemiTokenizer(velocity_bins=0)
    history = [_ids(tok, "Position_0 Pitch_62 Duration_48"), [], [], [], []]
    for seed in range(10):
        tokens, d = Form(repeat=1.0).replay(tok, history, 1, 8, None, np.random.default_rng(seed))
        assert d == 4 and tokens == _ids(tok, "Position_0 Pitch_62 Duration_48") + [tok.bar_id]
    assert Form(repeat=0.0).replay(tok, history, 1, 8, None, np.random.default_rng(0)) == ([], None)
    assert Form(repeat=1.0).replay(tok, history, 1, 8, None, None) == ([], None)
    # with an ending asked for, the last two bars are the cadence's
    assert Form(repeat=1.0, ending=(0, "major")).replay(tok, history, 7, 8, None, np.random.default_rng(0)) \
        == ([], None)
    with pytest.raises(ValueError, match="repeat"):
        Form(repeat=1.5)


def test_repeat_one_makes_the_new_bars_replay_earlier_ones_and_zero_leaves_them_to_the_model(prompt):
    counts = {}
    for repeat in (0.0, 1.0):
        same = total = 0
        for seed in range(3):
            out = continue_midi(prompt, prompt_bars=(1, 4), bars=8, seed=seed, repeat=repeat)
            lines = rhythm.bar_starts(out, end_tick=10 ** 6)[:13]
            notes = np.concatenate([out.prompt.notes, out.new_notes])
            bars = bars_by_loop(notes, lines)
            for k in range(4, 12):
                if bars[k]:
                    total += 1
                    same += any(bars[k] == bars[j] for j in range(k))
        counts[repeat] = same / total
    assert counts[1.0] >= 0.75 > counts[0.0]
