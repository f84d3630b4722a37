"""Continue a MIDI file with the model: what ``music-attn generate --prompt`` does, as one call.

The shape of nanoGPT's ``sample.py``, each step downhill::

    model = load_model(...)                         # 1. load (the shipped model by default)
    mid, score = load_prompt(source)                # 2. read the prompt file, once
    read = what the model reads of it               #    (every track, or the top voice; bars A..B)
    ids = tokenizer.encode(read).ids                # 3. encode
    out = generate(model, ids, ...)                 # 4. sample
    new = continue_prompt(mid, ..., out.ids, ...)   # 5. decode the new tokens onto the prompt file
    continued.write(path)                           # 6. write (the prompt's bytes as they were + new tracks)

Which notes are new has one rule, :func:`music_attn.music.continuation.new_notes`:
the notes the tokens after the prompt's token count add to the decoded prompt.
The returned :class:`Continued` is a :class:`~music_attn.music.score.Score` whose
notes are the prompt's notes (exactly as :func:`read_midi` reads the prompt, with
drums) followed by the new ones.
"""

from dataclasses import dataclass, fields

import mido
import numpy as np

from music_attn.errors import MusicAttnError
from music_attn.music import continuation as C
from music_attn.music import select
from music_attn.music.midi import read_midi
from music_attn.music.score import Score, write_midi
from music_attn.runtime.checkpoint import load_model
from music_attn.runtime.generate import Generated, generate

__all__ = ["continue_midi", "Continued", "DEFAULT_BARS"]

DEFAULT_BARS = 8    # bars generated when neither ``bars`` nor ``tokens`` says otherwise


@dataclass(frozen=True, eq=False)
class Continued(Score):
    """A continuation: the prompt's notes, then the new ones; :meth:`write` writes the file.

    Besides the Score fields: ``midi`` the file written (the prompt's tracks byte for
    byte, then the new tracks); ``prompt`` the Score of the prompt file (with drums);
    ``read`` the Score of the notes the model read; ``target`` the track continued
    (a :class:`~music_attn.music.continuation.TrackInfo`); ``added`` what was added
    (a :class:`~music_attn.music.continuation.Continuation`: new tracks, number of new
    notes, the marker's tick, notes left out as doubled); ``generated`` the sampled
    ids (:class:`~music_attn.runtime.generate.Generated`); ``drums_left_out`` drum
    notes the model did not read.
    """

    midi: mido.MidiFile = None
    prompt: Score = None
    read: Score = None
    target: C.TrackInfo = None
    added: C.Continuation = None
    generated: Generated = None
    drums_left_out: int = 0
    melody: bool = False
    tokenizer_bars: int = None     # the tokenizer's Bar token id (None: its tokens have no bars)

    @property
    def new_notes(self):
        """The notes after the prompt's (NOTE_DTYPE, (M,))."""
        return self.notes[len(self.prompt.notes):]

    def to_mido(self):
        return self.midi

    def describe(self):
        """What the file holds, in words: the prompt as it was, then what was added where."""
        score, added = self.prompt, self.added
        n_tempos = int(np.count_nonzero(np.diff(score.tempos["tempo"])))
        at = added.start_tick
        bar = int(select.bars_and_beats({"start_tick": np.array([at])}, score.time_signatures,
                                        score.ticks_per_beat)[0][0])
        return (f"the prompt as it was ({len(added.midi.tracks) - len(added.tracks)} tracks, "
                f"{len(score.notes)} notes, {n_tempos} tempo change{'s' * (n_tempos != 1)}), then "
                f"{added.n_notes} new notes on {_new_tracks(added)} from bar {bar} "
                f"({score.tick_to_time(at):.1f} s) at {_tempo_and_metre(score, at)}, "
                f"after the marker {C.MARKER_TEXT!r}")

    def reading(self):
        """What the model read and wrote, in words."""
        out = self.generated
        which = f"the top voice of track {self.target.index}" if self.melody else "every track"
        bars = "" if self.tokenizer_bars is None else f" ({out.bars} bar{'s' * (out.bars != 1)})"
        return (f"the model read {len(self.read.notes)} notes ({which}): {len(out.ids) - out.prompt_length} "
                f"new tokens{bars} after a {out.prompt_length}-token prompt, stopped at {out.stop}")

    def write(self, path):
        """Write the continuation file to ``path`` atomically (the prompt's tracks as they were)."""
        write_midi(path, self.midi)


def continue_midi(source, *, model=None, bars=DEFAULT_BARS, tokens=None, prompt_bars=None, track=None,
                  melody=False, drums=False, seed=None, temperature=1.0, top_k=None, top_p=None,
                  no_end=False, constrained=True, num_samples=None):
    """Continue the MIDI file ``source`` with ``model``; returns a :class:`Continued`.

    Parameters
    ----------
    source : path, mido.MidiFile or pretty_midi.PrettyMIDI of the prompt.
    model : Model, a checkpoint path, or None for the shipped model.
    bars : bars to generate (tokenizers with Bar tokens); ``tokens`` instead counts tokens.
    prompt_bars : (first, last), optional: the model reads only the notes starting in
        these bars of the prompt (from 1, both included) and continues after them.
    track : the track to continue, by number or name (default: the pitched track with
        the most notes); ``melody``: the model reads only its top voice.
    drums : let the model read the drum notes too (the file keeps them either way).
    seed : int seed of the sampling (sample i of ``num_samples`` uses ``seed + i``).
    temperature, top_k, top_p, no_end, constrained : as :func:`~music_attn.runtime.generate.generate`.
    num_samples : sample this many continuations at once; returns a list of them.
    """
    name = "the model" if model is None or hasattr(model, "forward") else str(model)
    model = model if hasattr(model, "forward") else load_model(model)                # 1. load
    tokenizer = _tokenizer(model, name)
    mid, score = C.load_prompt(source, sustain=tokenizer.sustain)                     # 2. read
    C.check_room_for_a_track(mid, score.name or "the prompt")
    tracks = C.prompt_tracks(mid, score)
    target = C.choose_track(tracks, score, select.track_names(score), track)
    drums = drums or tokenizer.include_drums
    read, dropped = C.prompt_reading(score, target, melody=melody, drums=drums)
    read = _in_bars(read, prompt_bars)
    if not len(read.notes):
        raise ValueError(f"{score.name or 'the prompt'}: the model would read no notes of it"
                         + ("" if drums else " (it holds only drums: --drums reads them)"))
    encoder = tokenizer if not drums or tokenizer.include_drums else tokenizer.with_options(include_drums=True)
    ids = encoder.encode(read).ids                                                     # 3. encode
    rngs = [np.random.default_rng(None if seed is None else seed + i) for i in range(num_samples or 1)]
    outs = generate(model, ids, max_new_tokens=tokens, n_bars=_bars(tokenizer, bars, tokens),  # 4. sample
                    no_end=no_end, temperature=temperature, top_k=top_k, top_p=top_p,
                    rng=rngs if num_samples else rngs[0], constrained=constrained, num_samples=num_samples)
    end = _prompt_end(score, prompt_bars)
    results = [_continued(mid, score, read, tracks, target, tokenizer, out, dropped, melody, end)   # 5. decode
               for out in (outs if num_samples else [outs])]
    return results if num_samples else results[0]


def _tokenizer(model, name):
    if model.tokenizer is None:
        raise MusicAttnError(f"{name}: the checkpoint has no tokenizer to turn tokens into MIDI")
    return model.tokenizer


def _bars(tokenizer, bars, tokens):
    """The bar budget: none when counting tokens or when the tokens have no bars."""
    return None if tokens or tokenizer.bar_id is None else (bars or DEFAULT_BARS)


def _in_bars(read, prompt_bars):
    """The notes of ``read`` that start in bars ``prompt_bars`` = (first, last), from 1."""
    if prompt_bars is None:
        return read
    first, last = (int(b) for b in prompt_bars)
    if not 1 <= first <= last:
        raise ValueError(f"prompt_bars must be (first, last) counted from 1, got {prompt_bars!r}")
    bar, _ = select.bars_and_beats(read.notes, read.time_signatures, read.ticks_per_beat)
    keep = select.passage_mask(bar, read.notes["start"], bars=(first, last))
    return Score(**{**{f.name: getattr(read, f.name) for f in fields(Score)}, "notes": read.notes[keep]})


def _prompt_end(score, prompt_bars):
    """The tick the continuation follows: the last note-off of the whole prompt (every track, drums
    too, whatever the model read), or of the notes starting in ``prompt_bars``."""
    notes = score.notes
    if prompt_bars is not None:
        bar, _ = select.bars_and_beats(notes, score.time_signatures, score.ticks_per_beat)
        notes = notes[select.passage_mask(bar, notes["start"], bars=tuple(int(b) for b in prompt_bars))]
    return int(notes["end_tick"].max()) if len(notes) else None


def _continued(mid, score, read, tracks, target, tokenizer, out, dropped, melody, prompt_end=None):
    """The Continued of one sample: the file, and the prompt's notes then the new ones."""
    added = C.continue_prompt(mid, score, read, tracks, target, tokenizer, out.ids, out.prompt_length,
                              prompt_end=prompt_end)
    whole = read_midi(added.midi, include_drums=True, sustain=tokenizer.sustain)
    new = whole.notes[np.isin(whole.notes["track"], added.tracks)]
    base = {f.name: getattr(whole, f.name) for f in fields(Score)}
    base.update(notes=np.concatenate([score.notes, new]), name=score.name)
    return Continued(**base, midi=added.midi, prompt=score, read=read, target=target, added=added,
                     generated=out, drums_left_out=dropped, melody=melody, tokenizer_bars=tokenizer.bar_id)


def _tempo_and_metre(score, tick):
    """'96 bpm in 3/4': the tempo and metre in force at ``tick``."""
    tempo = score.tempos[score.tempos["tick"] <= tick][-1]["tempo"]
    sig = score.time_signatures[score.time_signatures["tick"] <= tick][-1]
    return f"{60e6 / tempo:.4g} bpm in {sig['numerator']}/{sig['denominator']}"


def _new_tracks(added):
    """'track 5 'Violin I (continued)' (program 40)' for each new track, joined."""
    described = []
    for index in added.tracks:
        track = added.midi.tracks[index]
        name = next(m.name for m in track if m.type == "track_name")
        programs = [m.program for m in track if m.type == "program_change"]
        described.append(f"track {index} {name!r}" + (f" (program {programs[0]})" if programs else ""))
    return ", ".join(described)
