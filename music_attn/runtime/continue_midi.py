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
from music_attn.music import rhythm
from music_attn.music.midi import read_midi
from music_attn.music.theory import estimate_key
from music_attn.music.score import Score, write_midi
from music_attn.runtime.checkpoint import load_model
from music_attn.runtime.form import Form
from music_attn.runtime.generate import Generated, generate

__all__ = ["continue_midi", "Continued", "DEFAULT_BARS", "DEFAULT_TEMPERATURE", "DEFAULT_TOP_P",
           "DEFAULT_REPEAT"]

DEFAULT_BARS = 8    # bars generated when neither ``bars`` nor ``tokens`` says otherwise
# Sampling defaults chosen by measurement (docs/continuations.md: overlap with real continuations)
DEFAULT_TEMPERATURE = 0.9
DEFAULT_TOP_P = None
DEFAULT_REPEAT = 0.1


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
                  melody=False, drums=False, seed=None, temperature=DEFAULT_TEMPERATURE, top_k=None,
                  top_p=DEFAULT_TOP_P, no_end=None, end=False, constrained=True, num_samples=None,
                  repeat=DEFAULT_REPEAT):
    """Continue the MIDI file ``source`` with ``model``; returns a :class:`Continued`.

    Parameters
    ----------
    source : path, mido.MidiFile or pretty_midi.PrettyMIDI of the prompt.
    model : Model, a checkpoint path, or None for the shipped model.
    bars : bars to generate (tokenizers with Bar tokens); ``tokens`` instead counts tokens.
    prompt_bars : (first, last), optional: the model reads only the notes starting in
        these bars of the prompt (from 1, both included) and continues after them, at
        the bar line of bar ``last + 1``; the output holds those bars, then the
        continuation.  A prompt that ends at a bar line (this way, or with its last
        note held to one) never gets new notes in its last bar.
    track : the track to continue, by number or name (default: the pitched track with
        the most notes); ``melody``: the model reads only its top voice.  A melody (or a
        prompt the model reads as one line) is continued one note at a time.
    end : close on a cadence by the last bar: its last note the tonic of the prompt's key
        (:func:`~music_attn.music.theory.estimate_key`), held to the bar end.
    no_end : forbid the end-of-piece token before the last bar asked for; None (the
        default) does so when ``bars`` are asked for, False lets the model end early.
    drums : let the model read the drum notes too (the file keeps them either way).
    seed : int seed of the sampling (sample i of ``num_samples`` uses ``seed + i``).
    temperature, top_k, top_p, no_end, constrained : as :func:`~music_attn.runtime.generate.generate`
        (the defaults chosen by measurement, see ``docs/continuations.md``).
    num_samples : sample this many continuations at once; returns a list of them.
    repeat : probability that a new bar replays an earlier bar note for note (a phrase
        earlier, usually 4 bars; see :class:`~music_attn.runtime.form.Form`); 0 leaves
        repeats to the model alone.
    """
    name = "the model" if model is None or hasattr(model, "forward") else str(model)
    model = model if hasattr(model, "forward") else load_model(model)                # 1. load
    tokenizer = _tokenizer(model, name)
    mid, score = C.load_prompt(source, sustain=tokenizer.sustain)                     # 2. read
    C.check_room_for_a_track(mid, score.name or "the prompt")
    tracks = C.prompt_tracks(mid, score)
    target = C.choose_track(tracks, score, select.track_names(score), track)
    drums = drums or tokenizer.include_drums
    if prompt_bars is not None:
        mid, score = C.cut_to_passage(mid, score, *_passage_ticks(score, prompt_bars))
    read, dropped = C.prompt_reading(score, target, melody=melody, drums=drums)
    if not len(read.notes):
        raise ValueError(f"{score.name or 'the prompt'}: the model would read no notes of it"
                         + ("" if drums else " (it holds only drums: --drums reads them)"))
    encoder = tokenizer if not drums or tokenizer.include_drums else tokenizer.with_options(include_drums=True)
    ids = encoder.encode(read).ids                                                     # 3. encode
    ids, form = _form(tokenizer, read, ids, prompt_bars, end and bool(_bars(tokenizer, bars, tokens)), repeat)
    no_end = _bars(tokenizer, bars, tokens) is not None if no_end is None else no_end
    one_line = constrained and (melody or _one_line(read)) and hasattr(tokenizer.grammar(), "one_line")
    rngs = [np.random.default_rng(None if seed is None else seed + i) for i in range(num_samples or 1)]
    outs = generate(model, ids, max_new_tokens=tokens, n_bars=_bars(tokenizer, bars, tokens),  # 4. sample
                    no_end=no_end, temperature=temperature, top_k=top_k, top_p=top_p,
                    rng=rngs if num_samples else rngs[0], constrained=constrained, num_samples=num_samples,
                    one_line=one_line, form=form if constrained else None)
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


def _passage_ticks(score, prompt_bars):
    """(start, end) ticks of bars ``prompt_bars`` = (first, last), from 1: bar ``first``'s line to bar ``last + 1``'s."""
    first, last = (int(b) for b in prompt_bars)
    if not 1 <= first <= last:
        raise ValueError(f"prompt_bars must be (first, last) counted from 1, got {prompt_bars!r}")
    lines = rhythm.bar_starts(score, end_tick=_far_enough(score, last + 1))
    if len(lines) < last + 1:
        raise ValueError(f"prompt_bars {first}:{last}: the prompt has {len(lines) - 1} bars")
    return int(lines[first - 1]), int(lines[last])


def _far_enough(score, bars):
    """A tick past the line of bar ``bars`` + 1, whatever the metres."""
    longest = max(4 * score.ticks_per_beat * int(n) // int(d) for n, d in
                  zip(score.time_signatures["numerator"], score.time_signatures["denominator"]))
    return int(max(score.time_signatures["tick"].max(initial=0), 0)) + (bars + 1) * longest


def _one_line(read):
    """Whether the notes the model reads are one line: no two start together, none before the last ends."""
    notes = read.notes
    return len(notes) < 2 or bool(np.all(notes["start_tick"][1:] >= notes["end_tick"][:-1]))


def _form(tokenizer, read, ids, prompt_bars, end, repeat=0.0):
    """The prompt ids (with Bar tokens for its empty last bars) and the Form of the continuation.

    The continuation starts at a bar line when the prompt ends at one: the
    line after bar ``last`` of ``prompt_bars``, or the line the prompt's last
    note ends on.  Tokenizers without bars get no Form (None).
    """
    if tokenizer.bar_id is None or not hasattr(tokenizer, "positions_per_beat"):
        return ids, None
    notes = read.notes
    last_end = int(notes["end_tick"].max())
    lines = rhythm.bar_starts(read, end_tick=max(last_end, _passage_end(read, prompt_bars)) + 1)
    onset_bar = int(np.searchsorted(lines, notes["start_tick"].max(), side="right"))     # from 1
    if prompt_bars is not None:
        start_bar = int(prompt_bars[1]) + 1
    elif last_end in set(lines.tolist()):
        start_bar = int(np.searchsorted(lines, last_end)) + 1
    else:
        start_bar = None
    key = estimate_key(notes["pitch"], notes["end_tick"] - notes["start_tick"]) if end else None
    if start_bar is None and key is None and not repeat:
        return ids, None
    ids = np.asarray(ids)
    while ids.size and ids[-1] == tokenizer.eos_id:
        ids = ids[:-1]
    empty = max(0, (start_bar or 0) - onset_bar - 1)                     # bars of rest before the new bar
    ids = np.concatenate([ids, np.full(empty, tokenizer.bar_id, ids.dtype)])
    return ids, Form(start_bar=start_bar is not None, ending=key, repeat=float(repeat))


def _passage_end(read, prompt_bars):
    return 0 if prompt_bars is None else _far_enough(read, int(prompt_bars[1]) + 1)


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
