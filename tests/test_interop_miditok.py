"""Note alignment of MidiTok sequences, checked against MidiTok's own decoding on the corpus.

The reference: delete one note's tokens from the sequence and decode both with
MidiTok; the one note that disappears is the note those tokens spell, and it
must be the note the alignment names.  Skipped without miditok.
"""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

miditok = pytest.importorskip("miditok")
symusic = pytest.importorskip("symusic")

from music_attn.interop.miditok import MidiTokAlignmentError, note_alignment  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
TOKENIZERS = {"REMI": miditok.REMI, "TSD": miditok.TSD, "MIDILike": miditok.MIDILike}
CONFIGS = {"default": {}, "rests+tempos+chords": dict(use_rests=True, use_tempos=True, use_chords=True)}


def _sample_files(n=6, seed=0):
    """A seeded sample of single-track corpus files (the Bach chorales have four tracks)."""
    files = [p for p in sorted(DATA.rglob("*.mid")) if "bach" not in p.parts]
    rng = np.random.default_rng(seed)
    return [files[i] for i in rng.choice(len(files), n, replace=False)]


def _notes(tokenizer, tokens):
    """Multiset of (onset tick, pitch, velocity, duration) MidiTok decodes from token strings."""
    seq = miditok.TokSequence(tokens=list(tokens))
    score = tokenizer.decode([seq])
    return Counter((n.time, n.pitch, n.velocity, n.duration) for t in score.tracks for n in t.notes)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("name", TOKENIZERS, ids=str)
def test_each_notes_tokens_are_the_note_miditok_decodes_from_them(name, config):
    tokenizer = TOKENIZERS[name](miditok.TokenizerConfig(**CONFIGS[config]))
    rng = np.random.default_rng(1)
    for path in _sample_files():
        seq = tokenizer(symusic.Score(str(path)))
        a = note_alignment(tokenizer, seq)
        tokens = a.tokens
        full = _notes(tokenizer, tokens)
        score = tokenizer.decode(seq)
        seconds = dict(zip((n.time for n in score.tracks[0].notes),
                           (n.time for n in score.to("second").tracks[0].notes)))
        assert len(a.notes["pitch"]) == sum(full.values())          # every decoded note, once
        # MidiTok times a Rest from the end of the note before it, so taking out a note that a
        # Rest follows moves every later note (the cleaned corpus pads short bars with rests):
        # the property is checked on the notes no Rest follows.
        last = {n: int(np.flatnonzero(a.note_of_token == n)[-1]) for n in range(len(a.notes["pitch"]))}
        free = [n for n, i in last.items() if i + 1 >= len(tokens) or not tokens[i + 1].startswith("Rest")]
        for note in rng.choice(free, min(8, len(free)), replace=False):
            mine = np.flatnonzero(a.note_of_token == note)
            kept = [t for i, t in enumerate(tokens) if i not in set(mine)]
            gone = full - _notes(tokenizer, kept)
            assert sum(gone.values()) == 1, (path.name, note)
            (onset, pitch, velocity, _), = gone
            assert (pitch, velocity) == (a.notes["pitch"][note], a.notes["velocity"][note])
            assert seconds[onset] == pytest.approx(a.notes["start"][note])
            assert tokens[mine[0]].split("_")[0] in ("Pitch", "NoteOn")


def test_note_times_are_miditoks_in_seconds():
    tokenizer = miditok.REMI(miditok.TokenizerConfig())
    path = _sample_files(1, seed=3)[0]
    seq = tokenizer(symusic.Score(str(path)))
    a = note_alignment(tokenizer, seq)
    decoded = tokenizer.decode(seq).to("second").tracks[0].notes
    expected = sorted((round(n.time, 9), n.pitch, round(n.time + n.duration, 9)) for n in decoded)
    got = sorted(zip(np.round(a.notes["start"], 9), a.notes["pitch"], np.round(a.notes["end"], 9)))
    assert got == expected
    assert np.all(np.diff(a.notes["start"]) >= 0)                   # token order is time order


def test_structure_tokens_belong_to_no_note():
    tokenizer = miditok.TSD(miditok.TokenizerConfig(use_tempos=True))
    a = note_alignment(tokenizer, tokenizer(symusic.Score(str(_sample_files(1)[0]))))
    kinds = [t.split("_")[0] for t in a.tokens]
    for kind, note in zip(kinds, a.note_of_token):
        assert (note >= 0) == (kind in ("Pitch", "Velocity", "Duration")), kind


@pytest.mark.parametrize("make,match", [
    (lambda: miditok.CPWord(miditok.TokenizerConfig()), "supports MidiTok REMI, TSD, MIDILike"),
    (lambda: miditok.REMI(miditok.TokenizerConfig(use_programs=True)), "use_programs"),
    (lambda: miditok.TSD(miditok.TokenizerConfig(use_pitch_intervals=True)), "use_pitch_intervals"),
], ids=["CPWord", "programs", "pitch-intervals"])
def test_unsupported_tokenizers_are_refused_by_name(make, match):
    tokenizer = make()
    with pytest.raises(MidiTokAlignmentError, match=match):
        note_alignment(tokenizer, miditok.TokSequence(tokens=["Bar_None"]))


def test_several_tracks_are_refused():
    tokenizer = miditok.REMI(miditok.TokenizerConfig())
    chorale = sorted((DATA / "bach").glob("*.mid"))[0]
    seqs = tokenizer(symusic.Score(str(chorale)))
    with pytest.raises(MidiTokAlignmentError, match="one track"):
        note_alignment(tokenizer, seqs)
    assert note_alignment(tokenizer, seqs[0]).notes["pitch"].size > 0   # one of them is fine
