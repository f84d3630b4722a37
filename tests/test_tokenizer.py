"""The two tokenizers: vocabularies, hand-written encodings, decode of any ids, grammar, config."""

import io
import json

import mido
import numpy as np
import pretty_midi
import pytest

from midi_factory import midi_file, mido_reference, note_events, off, on, random_tune, tempo, time_signature, track
from music_attn.errors import TokenizerError
from music_attn.music.tokenizers import (
    PerformanceTokenizer,
    RemiTokenizer,
    Tokenizer,
    load_tokenizer,
    velocity_values,
)

TOKENIZERS = {
    "remi": RemiTokenizer,
    "remi_no_velocity": lambda: RemiTokenizer(velocity_bins=0),
    "performance": PerformanceTokenizer,
}


def _tune(notes, meta=(), tpb=480):
    return midi_file(track(list(meta)), track(note_events(notes)), ticks_per_beat=tpb)


def _decoded_notes(score):
    """(pitch, start s, end s, velocity) of a decoded Score as pretty_midi reads its MIDI, sorted; 1 ms."""
    return sorted(
        (n.pitch, round(n.start, 3), round(n.end, 3), n.velocity) for n in _pretty_notes(score)
    )


def _pretty_notes(score):
    """The notes pretty_midi (an independent reader) finds in the MIDI file a Score writes."""
    buffer = io.BytesIO()
    score.to_mido().save(file=buffer)
    buffer.seek(0)
    return [n for inst in pretty_midi.PrettyMIDI(buffer).instruments for n in inst.notes]


# --------------------------------------------------------------------------- vocabulary


def test_default_vocabulary_sizes():
    # performance: 128 NoteOn + 128 NoteOff + 100 TimeShift + 32 Velocity = 388 events, + 3 specials
    assert PerformanceTokenizer().vocab_size == 388 + 3
    # REMI: Bar + 30 TimeSig + 144 Position (12/4 = 12 beats * 12) + 128 Pitch + 32 Velocity
    #       + 96 Duration (8 beats * 12) + 3 specials
    assert RemiTokenizer().vocab_size == 1 + 30 + 144 + 128 + 32 + 96 + 3
    assert RemiTokenizer(velocity_bins=0).vocab_size == RemiTokenizer().vocab_size - 32


@pytest.mark.parametrize("name", TOKENIZERS)
def test_specials_come_first_and_tokens_read_type_value(name):
    tok = TOKENIZERS[name]()
    assert tok.vocab[:3] == ["PAD", "BOS", "EOS"]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert len(set(tok.vocab)) == tok.vocab_size
    for token in tok.vocab[3:]:
        kind, _, value = token.partition("_")
        assert kind.isalpha() and kind[0].isupper() and (value or token == "Bar"), token
    for i in (0, 5, tok.vocab_size - 1):
        assert tok.token_to_id(tok.id_to_token(i)) == i
    with pytest.raises(TokenizerError):
        tok.token_to_id("Pitch_999")
    with pytest.raises(TokenizerError):
        tok.id_to_token(tok.vocab_size)


def test_velocity_bins_pick_the_nearest_value_ties_to_the_lower():
    values = velocity_values(32).tolist()
    assert values[0] == 4 and values[-1] == 127 and values == sorted(set(values))
    tok = RemiTokenizer()
    for v in range(1, 128):
        dist = [abs(v - x) for x in values]
        expected = dist.index(min(dist))  # first minimum: the lower bin on a tie
        assert tok._velocity_bin_of(np.array([v]))[0] == expected


def test_structure_tokens_and_bar_id():
    remi, perf = RemiTokenizer(), PerformanceTokenizer()
    assert remi.vocab[remi.bar_id] == "Bar" and perf.bar_id is None
    for tok, structure, note in ((remi, ["Bar", "TimeSig_3/4", "Position_5", "BOS"], ["Pitch_60", "Velocity_80", "Duration_3"]),
                                 (perf, ["TimeShift_7", "EOS", "PAD"], ["NoteOn_60", "NoteOff_60", "Velocity_80"])):
        assert all(tok.is_structure(tok.token_to_id(t)) for t in structure)
        assert not any(tok.is_structure(tok.token_to_id(t)) for t in note)


# --------------------------------------------------------------------------- REMI encoding


def test_remi_encodes_bars_positions_triplets_and_metre_changes():
    meta = [(0, time_signature(3, 4)), (4320, time_signature(6, 8))]  # 3/4 bars: 1440 ticks
    notes = [
        (60, 0, 480, 80),  # bar 0, beat 1
        (62, 640, 960, 80),  # second triplet eighth of beat 2: 12 + 4
        (64, 1560, 1680, 80),  # bar 1, second sixteenth: position 3
        (67, 4320, 5040, 80),  # bar 3 (bar 2 is empty), now 6/8: 36 positions per bar
        (69, 5760, 6240, 80),  # 4320 + 1440: bar 4
    ]
    got = RemiTokenizer(velocity_bins=0).encode(_tune(notes, meta)).tokens
    assert got == (
        "BOS Bar TimeSig_3/4 Position_0 Pitch_60 Duration_12 Position_16 Pitch_62 Duration_8 "
        "Bar Position_3 Pitch_64 Duration_3 Bar Bar TimeSig_6/8 Position_0 Pitch_67 Duration_18 "
        "Bar Position_0 Pitch_69 Duration_12 EOS"
    ).split()


def test_remi_velocity_token_follows_pitch_and_notes_at_one_position_go_low_to_high():
    notes = [(67, 0, 480, 100), (60, 0, 240, 80)]
    got = RemiTokenizer().encode(_tune(notes)).tokens
    assert got == "BOS Bar TimeSig_4/4 Position_0 Pitch_60 Velocity_80 Duration_6 Pitch_67 Velocity_100 Duration_12 EOS".split()


def test_remi_metre_change_inside_a_bar_waits_for_the_next_bar_line():
    meta = [(0, time_signature(4, 4)), (480, time_signature(3, 4))]
    notes = [(60, 1440, 1920, 80), (62, 1920 + 1440, 1920 + 1920, 80)]
    got = RemiTokenizer(velocity_bins=0).encode(_tune(notes, meta)).tokens
    # bar 0 stays 4/4 (ends at 1920); from there bars are 3/4 (1440 ticks)
    assert got == "BOS Bar TimeSig_4/4 Position_36 Pitch_60 Duration_12 Bar TimeSig_3/4 Bar Position_0 Pitch_62 Duration_12 EOS".split()


def test_remi_quantizes_half_up_and_bounds_durations():
    tok = RemiTokenizer(velocity_bins=0, max_duration_beats=2)
    # 480 ticks per beat, 40 per position: 20 -> 0.5 -> 1 (half up); 10 ticks long -> 1 position;
    # 10 beats long -> 24 positions (2 beats)
    notes = [(60, 20, 30, 80), (62, 960, 960 + 4800, 80)]
    assert tok.encode(_tune(notes)).tokens[3:9] == "Position_1 Pitch_60 Duration_1 Position_24 Pitch_62 Duration_24".split()


def test_remi_long_silence_costs_at_most_max_empty_bars():
    tok = RemiTokenizer(velocity_bins=0, max_empty_bars=2)
    notes = [(60, 0, 480, 80), (62, 1920 * 1000, 1920 * 1000 + 480, 80)]
    seq = tok.encode(_tune(notes))
    assert seq.tokens.count("Bar") == 1 + 2 + 1
    starts = [n.start for n in _pretty_notes(tok.decode(seq.ids).score)]
    assert starts == [0.0, 3 * 2.0]  # the second note moves to bar 3 (2 s per 4/4 bar at 120 bpm)


def test_unsupported_metre_reads_as_four_four():
    got = RemiTokenizer(velocity_bins=0).encode(_tune([(60, 0, 480, 80)], [(0, time_signature(13, 16))])).tokens
    assert got[2] == "TimeSig_4/4"


# --------------------------------------------------------------------------- performance encoding


def test_performance_encodes_seconds_as_time_shifts_offs_before_ons():
    notes = [(60, 0, 480, 80), (64, 240, 1920, 80), (60, 480, 720, 80)]  # 120 bpm: 1 beat = 0.5 s
    got = PerformanceTokenizer(velocity_bins=0).encode(_tune(notes)).tokens
    assert got == (
        "BOS NoteOn_60 TimeShift_25 NoteOn_64 TimeShift_25 NoteOff_60 NoteOn_60 TimeShift_25 NoteOff_60 "
        "TimeShift_100 TimeShift_25 NoteOff_64 EOS"
    ).split()


def test_performance_follows_the_tempo_map():
    meta = [(0, tempo(60)), (480, tempo(240))]  # beat 1 lasts 1 s, then 0.25 s per beat
    got = PerformanceTokenizer(velocity_bins=0).encode(_tune([(60, 0, 960, 80)], meta)).tokens
    assert got == "BOS NoteOn_60 TimeShift_100 TimeShift_25 NoteOff_60 EOS".split()


def test_performance_velocity_token_only_when_the_bin_changes():
    notes = [(60, 0, 240, 80), (62, 240, 480, 81), (64, 480, 720, 120)]  # 80 and 81: one bin
    got = PerformanceTokenizer().encode(_tune(notes)).tokens
    assert sum(t.startswith("Velocity_") for t in got) == 2
    assert got[1].startswith("Velocity_") and got[2] == "NoteOn_60"


def test_performance_long_silence_is_capped():
    hour = 3600 * 2 * 480  # ticks in an hour at 120 bpm
    notes = [(60, 0, 240, 80), (62, hour, hour + 240, 80)]
    tok = PerformanceTokenizer(velocity_bins=0)
    seq = tok.encode(_tune(notes))
    assert seq.tokens.count("TimeShift_100") == 5 and len(seq) < 20
    starts = [n.start for n in sorted(_pretty_notes(tok.decode(seq.ids).score), key=lambda n: n.start)]
    assert starts == pytest.approx([0.0, 0.25 + 5.0])


def test_performance_sustain_pedal_lengthens_notes_by_default():
    pedal = [(0, mido.Message("control_change", control=64, value=100)), (960, mido.Message("control_change", control=64, value=0))]
    mid = midi_file(track(pedal + [(0, on(60, 80)), (240, off(60))]))
    held = PerformanceTokenizer(velocity_bins=0).encode(mid).tokens
    dry = PerformanceTokenizer(velocity_bins=0, sustain=False).encode(mid).tokens
    assert held == "BOS NoteOn_60 TimeShift_100 NoteOff_60 EOS".split()
    assert dry == "BOS NoteOn_60 TimeShift_25 NoteOff_60 EOS".split()


# --------------------------------------------------------------------------- both: alignment, empty, transpose


@pytest.mark.parametrize("name", TOKENIZERS)
def test_every_note_token_points_at_its_note(name):
    tok = TOKENIZERS[name]()
    mid, _ = random_tune(np.random.default_rng(3), metres=((3, 4), (6, 8)), voices=2)
    seq = tok.encode(mid)
    assert seq.ids.dtype == np.int32 and seq.ids[0] == tok.bos_id and seq.ids[-1] == tok.eos_id
    assert len(seq.note_of_token) == len(seq) and set(seq.note_of_token[[0, -1]]) == {-1}
    for i, token in enumerate(seq.tokens):
        note = seq.note_of_token[i]
        kind, _, value = token.partition("_")
        assert (note >= 0) == (kind in ("Pitch", "Velocity", "Duration", "NoteOn", "NoteOff")), token
        if kind in ("Pitch", "NoteOn", "NoteOff"):
            assert int(value) == seq.notes["pitch"][note]
    counts = np.bincount(seq.note_of_token[seq.note_of_token >= 0], minlength=len(seq.notes))
    assert counts.min() >= 2  # every note has its tokens


@pytest.mark.parametrize("name", TOKENIZERS)
def test_file_without_notes_encodes_to_bos_eos_and_decodes_to_nothing(name):
    tok = TOKENIZERS[name]()
    seq = tok.encode(midi_file(track([(0, tempo(100))], end=5000)))
    assert seq.tokens == ["BOS", "EOS"] and len(seq.notes) == 0
    result = tok.decode(seq.ids)
    assert result.skipped == 0 and len(_pretty_notes(result.score)) == 0


@pytest.mark.parametrize("name", TOKENIZERS)
def test_transpose_moves_every_note_and_nothing_else(name):
    tok = TOKENIZERS[name]()
    mid, _ = random_tune(np.random.default_rng(4), metres=((2, 4), (3, 4)))
    seq = tok.encode(mid)
    up = tok.transpose(seq.ids, 5)
    before, after = _decoded_notes(tok.decode(seq.ids).score), _decoded_notes(tok.decode(up).score)
    assert after == [(p + 5, s, e, v) for p, s, e, v in before]
    assert np.array_equal(tok.transpose(up, -5), seq.ids)
    with pytest.raises(TokenizerError, match="outside"):
        tok.transpose(seq.ids, 100)


# --------------------------------------------------------------------------- decode of any ids


def test_remi_decode_skips_and_counts_illegal_tokens():
    tok = RemiTokenizer(velocity_bins=0)
    tokens = "BOS Bar Pitch_60 Position_12 Pitch_60 Duration_12 Position_6 Bar EOS Pitch_70 PAD".split()
    result = tok.decode(tok.ids_from_tokens(tokens))
    # skipped: Pitch_60 right after Bar, Position_6 (not after 12), Pitch_70 after EOS; PAD is ignored
    assert result.skipped == 3
    assert _decoded_notes(result.score) == [(60, 0.5, 1.0, 80)]


def test_remi_decode_counts_an_unfinished_note():
    tok = RemiTokenizer()
    tokens = "BOS Bar Position_0 Pitch_60 Velocity_80".split()
    assert tok.decode(tok.ids_from_tokens(tokens)).skipped == 3


def test_performance_decode_skips_note_offs_of_silent_pitches():
    tok = PerformanceTokenizer(velocity_bins=0)
    tokens = "NoteOff_60 NoteOn_60 TimeShift_50 NoteOff_60 NoteOff_60 NoteOn_62".split()
    result = tok.decode(tok.ids_from_tokens(tokens))
    assert result.skipped == 2
    # the held NoteOn_62 ends where the sequence ends, one step long at least
    assert _decoded_notes(result.score) == [(60, 0.0, 0.5, 80), (62, 0.5, 0.51, 80)]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_decode_accepts_any_ids(name):
    tok = TOKENIZERS[name]()
    rng = np.random.default_rng(5)
    for _ in range(30):
        ids = rng.integers(-3, tok.vocab_size + 3, size=int(rng.integers(0, 200)))
        result = tok.decode(ids)
        outside = int(((ids < 0) | (ids >= tok.vocab_size)).sum())
        assert outside <= result.skipped <= len(ids)
    with pytest.raises(TokenizerError):
        tok.decode(np.array([1.5, 2.0]))


# --------------------------------------------------------------------------- grammar


def _walk(tok, rng, max_len=400):
    """Sample only allowed tokens (EOS made rare) until EOS; returns the ids."""
    state, ids = tok.grammar(), []
    while not state.done:
        mask = state.allowed()
        assert mask.any()
        weights = mask.astype(float)
        if len(ids) < max_len and mask.sum() > 1:
            weights[tok.eos_id] *= 0.002
        elif mask[tok.eos_id]:
            weights = np.eye(len(mask))[tok.eos_id]
        token = int(rng.choice(len(mask), p=weights / weights.sum()))
        state.advance(token)
        ids.append(token)
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("name", TOKENIZERS)
def test_sequences_sampled_under_the_grammar_decode_without_skips(name):
    tok = TOKENIZERS[name]()
    notes = 0
    for seed in range(40):
        ids = _walk(tok, np.random.default_rng(seed))
        result = tok.decode(ids)
        assert result.skipped == 0, (seed, [tok.vocab[i] for i in ids])
        notes += len(_pretty_notes(result.score))
    assert notes > 100  # the walks did make music


@pytest.mark.slow
@pytest.mark.parametrize("name", TOKENIZERS)
def test_allowed_mask_matches_what_the_state_accepts(name):
    tok = TOKENIZERS[name]()
    rng = np.random.default_rng(11)
    state = tok.grammar()
    for step in range(60):
        mask = state.allowed()
        probe = rng.choice(np.arange(1, tok.vocab_size), size=25, replace=False)
        for token in probe.tolist():
            assert state.copy().step(token) == bool(mask[token]), (step, tok.vocab[token], state.state)
        choice = int(rng.choice(np.flatnonzero(mask & (np.arange(tok.vocab_size) != tok.eos_id))))
        state.advance(choice)


def test_advance_refuses_an_illegal_token():
    tok = RemiTokenizer()
    state = tok.grammar()
    state.advance(tok.bos_id)
    with pytest.raises(TokenizerError, match="Pitch_60"):
        state.advance(tok.token_to_id("Pitch_60"))
    assert not state.allowed()[tok.bos_id]


def test_remi_grammar_offers_only_positions_inside_the_bar_after_the_last_one():
    tok = RemiTokenizer()
    state = tok.grammar()
    for t in "BOS Bar TimeSig_3/4 Position_5 Pitch_60 Velocity_80 Duration_2".split():
        state.advance(tok.token_to_id(t))
    offered = [tok.vocab[i] for i in np.flatnonzero(state.allowed()) if tok.vocab[i].startswith("Position_")]
    assert offered == [f"Position_{p}" for p in range(6, 36)]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "tok",
    [RemiTokenizer(), RemiTokenizer(positions_per_beat=4, velocity_bins=8, time_signatures=[(3, 4), (6, 8)]),
     PerformanceTokenizer(), PerformanceTokenizer(time_step=0.02, max_shift_steps=50, sustain=False)],
    ids=["remi", "remi_custom", "performance", "performance_custom"],
)
def test_config_survives_dict_and_json(tok, tmp_path):
    again = Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert type(again) is type(tok) and again.vocab == tok.vocab and again == tok
    tok.save(tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert loaded.vocab == tok.vocab and loaded.to_dict() == tok.to_dict()


def test_bad_configs_raise_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError, match="type"):
        Tokenizer.from_dict({"type": "abc"})
    with pytest.raises(TokenizerError, match="bad remi"):
        Tokenizer.from_dict({"type": "remi", "colour": "red"})
    with pytest.raises(TokenizerError, match="vocabulary"):
        Tokenizer.from_dict({**RemiTokenizer().to_dict(), "vocab": ["PAD"]})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(TokenizerError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")


# --------------------------------------------------------------------------- velocity scale


def test_velocity_80_comes_back_as_80_with_the_default_bins_and_every_velocity_with_127():
    notes = [(60 + k % 24, 240 * k, 240 * k + 200, v) for k, v in enumerate(range(1, 128))]
    for tok, expected in ((RemiTokenizer(), {80: 80, 64: 64, 96: 96, 112: 112, 127: 127}),
                          (RemiTokenizer(velocity_bins=127), {v: v for v in range(1, 128)})):
        decoded = sorted((n.start, n.velocity) for n in _pretty_notes(tok.decode(tok.encode(_tune(notes)).ids).score))
        back = {v: got for (_, got), (_, _, _, v) in zip(decoded, notes)}
        assert {v: back[v] for v in expected} == expected


def test_configs_saved_before_the_velocity_scale_keep_their_vocabulary():
    old = {"type": "remi", "positions_per_beat": 12, "velocity_bins": 32, "max_duration_beats": 8,
           "max_empty_bars": 16, "time_signatures": [[4, 4], [3, 4]], "pitch_range": [0, 127], "include_drums": False}
    tok = Tokenizer.from_dict(old)
    velocities = [t for t in tok.vocab if t.startswith("Velocity_")]
    assert velocities[19:21] == ["Velocity_79", "Velocity_83"]  # round(127 * 20 / 32), round(127 * 21 / 32)
    assert not tok.tempo and not tok.programs and not any(t.startswith(("Tempo_", "Program_")) for t in tok.vocab)
    assert Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))).vocab == tok.vocab
    assert "Velocity_80" in Tokenizer.from_dict({"type": "remi"}).vocab  # a config naming no bins: today's scale


# --------------------------------------------------------------------------- what tokens mean


def _pitch_from_string(token):
    """The pitch a token string names (an independent reading of the vocabulary), or -1."""
    kind, _, value = token.partition("_")
    return int(value) if kind in ("Pitch", "NoteOn", "NoteOff") else -1


@pytest.mark.parametrize("tok", [RemiTokenizer(tempo=True, programs=True), PerformanceTokenizer(programs=True),
                                 RemiTokenizer(pitch_range=(21, 108))], ids=["remi", "performance", "remi_88"])
def test_pitch_of_names_the_pitch_of_every_pitch_token_and_only_those(tok):
    expected = [_pitch_from_string(t) for t in tok.vocab]
    assert tok.pitch_of().tolist() == expected
    ids = np.array([tok.bos_id, tok.token_to_id(tok.vocab[-1]), tok.eos_id] + list(range(tok.vocab_size)))
    assert tok.pitch_of(ids).tolist() == [_pitch_from_string(tok.vocab[i]) for i in ids]


def test_is_structure_answers_for_arrays_of_ids():
    tok = RemiTokenizer(tempo=True, programs=True)
    tokens = ["BOS", "Bar", "Tempo_96", "Position_0", "Program_40", "Pitch_60", "Velocity_80", "Duration_3", "EOS"]
    got = tok.is_structure(tok.ids_from_tokens(tokens)).tolist()
    assert got == [True, True, True, True, False, False, False, False, True]


def test_allowed_next_follows_the_grammar_after_a_prefix():
    remi = RemiTokenizer(programs=True)
    allowed = remi.allowed_next(remi.ids_from_tokens("BOS Bar Position_3".split()))
    assert [remi.vocab[i] for i in np.flatnonzero(allowed)] == [f"Program_{p}" for p in range(-1, 128)]
    perf = PerformanceTokenizer()
    allowed = perf.allowed_next(perf.ids_from_tokens("BOS NoteOn_60 TimeShift_5".split()))
    offs = [perf.vocab[i] for i in np.flatnonzero(allowed) if perf.vocab[i].startswith("NoteOff")]
    assert offs == ["NoteOff_60"] and allowed[perf.token_to_id("NoteOn_61")] and allowed[perf.eos_id]
    with pytest.raises(TokenizerError, match="Duration_3"):
        remi.allowed_next(remi.ids_from_tokens("BOS Bar Duration_3".split()))


# --------------------------------------------------------------------------- tempo and program tokens


def test_remi_tempo_token_follows_the_bar_or_the_position_where_the_tempo_changes():
    meta = [(0, tempo(96)), (1920, tempo(140)), (1920 + 960, tempo(60))]  # bar 2 line; bar 2 beat 3
    notes = [(60, 0, 480, 80), (62, 1920, 2400, 80), (64, 1920 + 1440, 1920 + 1920, 80)]
    got = RemiTokenizer(velocity_bins=0, tempo=True).encode(_tune(notes, meta)).tokens
    assert got == (
        "BOS Bar TimeSig_4/4 Tempo_96 Position_0 Pitch_60 Duration_12 "
        "Bar Tempo_140 Position_0 Pitch_62 Duration_12 Position_24 Tempo_60 Position_36 Pitch_64 Duration_12 EOS"
    ).split()


def test_program_token_precedes_each_pitch_and_drums_are_program_minus_one():
    meta = [(0, mido.Message("program_change", program=40, channel=0))]
    notes = note_events([(60, 0, 480, 80)]) + note_events([(36, 0, 240, 100)], channel=9)
    mid = midi_file(track(meta + notes))
    got = RemiTokenizer(velocity_bins=0, programs=True, include_drums=True).encode(mid).tokens
    assert got == "BOS Bar TimeSig_4/4 Position_0 Program_-1 Pitch_36 Duration_6 Program_40 Pitch_60 Duration_12 EOS".split()
    perf = PerformanceTokenizer(velocity_bins=0, programs=True, include_drums=True).encode(mid).tokens
    assert perf == ("BOS Program_-1 NoteOn_36 Program_40 NoteOn_60 TimeShift_25 Program_-1 NoteOff_36 "
                    "TimeShift_25 Program_40 NoteOff_60 EOS").split()  # 240 and 480 ticks at 120 bpm


@pytest.mark.parametrize("tok", [RemiTokenizer(tempo=True, programs=True), PerformanceTokenizer(tempo=True, programs=True)],
                         ids=["remi", "performance"])
def test_decode_restores_programs_drum_channel_and_tempo_changes(tok):
    meta = [(0, tempo(90)), (1920, tempo(150)),
            (0, mido.Message("program_change", program=41, channel=3))]
    notes = note_events([(60, 0, 480, 80), (65, 1920, 2400, 80)], channel=3) + note_events([(38, 480, 600, 90)], channel=9)
    ref = mido_reference(tok.decode(tok.encode(midi_file(track(meta + notes))).ids).score.to_mido())
    assert [(p, prog) for p, *_, prog in ref["notes"]] == [(60, 41), (65, 41)]  # drums left out by default
    assert [round(60e6 / t) for _, t in sorted(ref["tempos"])][-2:] == [90, 150]
    drums = tok.__class__(**{**tok._config(), "include_drums": True})
    ref = mido_reference(drums.decode(drums.encode(midi_file(track(meta + notes))).ids).score.to_mido(), include_drums=True)
    assert [(p, ch) for p, _, _, _, ch, _, _ in ref["notes"]] == [(38, 9), (60, 0), (65, 0)]


def test_decode_writes_the_given_bpm_and_says_what_it_assumed():
    tok = RemiTokenizer()
    ids = tok.ids_from_tokens("BOS Bar Position_0 Pitch_60 Velocity_80 Duration_12 EOS".split())
    result = tok.decode(ids, bpm=90)
    assert [round(60e6 / t) for _, t in mido_reference(result.score.to_mido())["tempos"]] == [90]
    assert "tempo 90 bpm" in " ".join(result.assumed) and "piano" in " ".join(result.assumed)
    timed = RemiTokenizer(tempo=True, programs=True)
    ids = timed.ids_from_tokens("BOS Bar Tempo_72 Position_0 Program_40 Pitch_60 Velocity_80 Duration_12 EOS".split())
    result = timed.decode(ids, bpm=90)
    assert result.assumed == () and [round(60e6 / t) for _, t in mido_reference(result.score.to_mido())["tempos"]] == [72]
    with pytest.raises(TokenizerError, match="bpm"):
        tok.decode(ids, bpm=float("nan"))


@pytest.mark.parametrize("tok", [RemiTokenizer(tempo=True, programs=True), PerformanceTokenizer(tempo=True, programs=True),
                                 RemiTokenizer(tempo=True, velocity_bins=0)], ids=["remi", "performance", "remi_tempo"])
def test_sequences_sampled_under_the_grammar_with_options_decode_without_skips(tok):
    for seed in range(15):
        ids = _walk(tok, np.random.default_rng(seed), max_len=300)
        assert tok.decode(ids).skipped == 0, (seed, [tok.vocab[i] for i in ids])


# --------------------------------------------------------------------------- settings from files


@pytest.mark.parametrize("kind, setting, value", [
    ("remi", "positions_per_beat", 10**9), ("remi", "positions_per_beat", "12"), ("remi", "positions_per_beat", 1.5),
    ("remi", "max_duration_beats", 10**7), ("remi", "max_empty_bars", -1), ("remi", "velocity_bins", True),
    ("remi", "velocity_bins", 1000), ("remi", "time_signatures", [[3, 0]]), ("remi", "time_signatures", [[3, 5]]),
    ("remi", "time_signatures", [[10**6, 4]]), ("remi", "time_signatures", "4/4"), ("remi", "time_signatures", []),
    ("remi", "pitch_range", [0, 500]), ("remi", "pitch_range", [60]), ("remi", "tempo", "yes"),
    ("remi", "tempo_range", [0, 10**6]), ("remi", "velocity_scale", "loud"),
    ("performance", "time_step", float("nan")), ("performance", "time_step", 1e-9),
    ("performance", "max_shift_steps", 10**7), ("performance", "max_gap_seconds", float("inf")),
    ("performance", "sustain", 1), ("performance", "programs", None),
])
def test_every_setting_is_checked_before_use(kind, setting, value):
    with pytest.raises(TokenizerError, match=setting.split("_")[0]):
        Tokenizer.from_dict({"type": kind, setting: value})


def test_deeply_nested_config_or_json_is_a_tokenizer_error_not_a_recursion_error(tmp_path):
    nested = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(TokenizerError, match="nested"):
        Tokenizer.from_dict({"type": "remi", "time_signatures": nested})
    (tmp_path / "deep.json").write_text('{"type": "remi", "time_signatures": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(TokenizerError, match="nested"):
        load_tokenizer(tmp_path / "deep.json")
