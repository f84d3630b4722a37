"""Harmonize a melody: alto, tenor and bass under a given soprano, by the shipped harmonizer.

The harmonizer is the four-voice grid model of the JSB Chorales benchmark
(:class:`~music_attn.GridTokenizer`: soprano, alto, tenor, bass at each sixteenth)
that also reads, at every position, the soprano of the next ``K`` sixteenths as
condition tokens (``ModelConfig.condition``, :func:`condition_of`): each alto,
tenor and bass cell is chosen knowing where the melody goes for the next ``K``
steps (two bars of 4/4 for the shipped model) as well as all the music before it.

``harmonize`` reads downhill, each step on its own line:

1. :func:`read_melody` -- the melody's notes (one track, or a passage of bars)
   on a grid of sixteenths, moved by octaves into the model's soprano range;
2. :func:`sample_voices` -- the soprano forced, alto, tenor and bass sampled one
   cell at a time; with ``rules`` (the default) a cell that would make parallel
   fifths or octaves, hidden octaves to the bass, a crossing, a gap of more than
   an octave between upper voices or a note out of its range is not drawn;
3. :func:`harmony_file` -- the input file as it was (its melody track, tempo
   map, metres, key signatures and ticks per beat) plus three tracks named
   Alto, Tenor and Bass.

Shape legend: S steps (sixteenths), N samples, V vocab.
"""

import dataclasses
from dataclasses import dataclass

import mido
import numpy as np

from music_attn._threads import single_threaded_blas
from music_attn.errors import MusicAttnError
from music_attn.music import select
from music_attn.music.constants import DRUM_CHANNEL
from music_attn.music.continuation import _note_messages, _track, load_prompt, prompt_tracks
from music_attn.music.tokenizers.grid import STEPS_PER_BEAT, GridTokenizer
from music_attn.music.midi import Score, read_midi, write_midi
from music_attn.music.voice_leading import PAIRS, RANGES, VOICE_NAMES, voice_leading
from music_attn.runtime.checkpoint import load_model, shipped_model_path
from music_attn.runtime.generate import next_token_distribution
from music_attn.runtime.keys import KEYS, dead_after, fitting_shifts, key_shifts, mix, shift_table
from music_attn.runtime.windows import alignment, log_softmax, spans, window_start

__all__ = ["harmonize", "harmonization_nll", "Harmonization", "Melody", "read_melody",
           "sample_voices", "condition_of", "harmony_file", "load_harmonizer",
           "MAX_STEPS", "VOICE_TRACKS", "analyze_file"]

VOICE_TRACKS = ("Alto", "Tenor", "Bass")
# The longest melody harmonized in one call: 256 bars of 4/4, about 90 s in three keys (the
# bound keeps a 10,000-bar file from running for an hour).
MAX_STEPS = 4096
# The soprano's range in the chorales (train and validation): melodies are moved by octaves into it.
SOPRANO_RANGE = (60, 81)
# Sampling settings of `harmonize` (chosen on the validation chorales: docs/harmonize.md).
TEMPERATURE = 0.9
# With the rules, each harmonization is the best of this many drawn side by side: fewest
# faults, then the most complete chords, then the most likely (docs/harmonize.md).
CANDIDATES = 4
# Sequences decoded side by side at most (samples x keys): bounds the KV cache, about 4 MB a
# sequence for the shipped harmonizer.
ROWS = 48


def harmonizer_path():
    """Where the shipped harmonizer lives inside the installed package."""
    return shipped_model_path().with_name("harmonizer.npz")


def load_harmonizer(path=None):
    """The harmonizer at ``path`` (None: the shipped one); MusicAttnError if it is not one."""
    model = load_model(harmonizer_path() if path is None else path)
    if not isinstance(model.tokenizer, GridTokenizer):
        raise MusicAttnError(f"{path}: not a four-voice grid model (harmonize needs one, "
                             "such as the shipped harmonizer)")
    return model


# --------------------------------------------------------------------------- the melody ahead

def condition_of(tokenizer, soprano, n_tokens, ahead):
    """The condition tokens (n_tokens, K) of a grid sequence ``[BOS] + 4 S cells (+ EOS)``.

    Token j belongs to step ``t = (j - 1) // 4`` (BOS to step -1); it reads the soprano of
    steps ``t + 1 .. t + K`` (PAD past the end), so every cell of a step is predicted
    knowing the melody's next K sixteenths.  soprano : int (S,) pitches, -1 silent.
    """
    sop = tokenizer.grid_ids(np.column_stack([soprano, np.full((len(soprano), 3), -1)]))[:, 0]
    return _ahead(sop, n_tokens, ahead, tokenizer.pad_id)


def condition_for_ids(model, ids):
    """The condition tokens (n, K) of a grid token sequence ``ids`` (n,) that starts with BOS:
    its soprano is read from the sequence itself (one cell in four), or None for a model
    without a condition."""
    if not ahead(model):
        return None
    ids = np.asarray(ids, dtype=np.int64)
    cells = ids[1:]
    tok = model.tokenizer
    steps = np.flatnonzero(np.isin(cells, [tok.eos_id, tok.pad_id, tok.bos_id]))   # EOS / PAD end the grid
    cells = cells[:steps[0] if steps.size else len(cells)]
    return _ahead(cells[0::4], len(ids), ahead(model), model.tokenizer.pad_id)


def _ahead(soprano_ids, n_tokens, K, pad):
    padded = np.concatenate([soprano_ids, np.full(K + n_tokens // 4 + 2, pad)])
    step = (np.arange(n_tokens) - 1) // 4                                      # (n,) BOS: -1
    return padded[(step + 1)[:, None] + np.arange(K)].astype(np.int64)


def ahead(model):
    """Sixteenths of melody the model reads ahead (0 for a plain grid model)."""
    return int(model.config.condition)


def _windows_logp(model, ids, cond, stride):
    """log-probabilities (n-1, V) of the token after each token but the last: windows of
    ``max_len`` moving by ``stride``, each position scored in the window that owns it."""
    W = model.config.max_len
    out = np.empty((len(ids) - 1, model.config.vocab_size))
    for span in spans(len(ids), W, min(stride, W), align=alignment(model)):
        window = ids[span.start:span.stop][None]
        c = None if cond is None else cond[span.start:span.stop][None]
        logp = log_softmax(np.asarray(model.forward(window, condition=c)[0, :-1], dtype=np.float64))
        keep = max(span.keep, span.start + 1)
        out[keep - 1:span.stop - 1] = logp[keep - span.start - 1:]
    return out


def harmonization_nll(grid, *, model=None, keys=KEYS, stride=256, total=False):
    """The model's NLL of the alto, tenor and bass given the soprano, nats per cell.

    Parameters
    ----------
    grid : int (S, 4) a 16th-note grid (S, A, T, B; -1 for silence), pitches in the
        model's range.
    model : a harmonizer (None: the shipped one); a plain grid model is scored on
        its own (it sees the soprano only up to the current step).
    keys : keys the model reads the piece in (:mod:`~music_attn.runtime.keys`): each cell's
        distribution is the mean of its distributions in the written key and
        ``keys // 2`` semitones either side that the melody fits; 1: the written key only.
    stride : window stride (tokens) for a piece longer than the model's window.
    total : return (summed nats, number of cells) instead of the mean.

    Returns
    -------
    float : nats per lower-voice cell (the unit of the Music Transformer's 0.335 per token).
    """
    model = load_harmonizer() if model is None else model
    grid = np.asarray(grid, dtype=np.int64)
    tok = model.tokenizer
    ids = tok.encode_grid(grid).ids.astype(np.int64)
    shifts = fitting_shifts(keys, grid[:, 0], tok.pitch_range)
    cond = _condition(model, grid[:, 0], len(ids))     # the melody fits every key read: cond moves whole
    probs, tables, live = [], [], []
    for s in shifts:
        table = shift_table(tok, s)
        moved = table[ids]
        probs.append(np.exp(_windows_logp(model, np.where(moved < 0, tok.rest_id, moved),
                                          None if cond is None else table[cond], stride)))
        tables.append(table)
        live.append(~dead_after(moved)[:-1])           # target j reads tokens 0..j
    targets = ids[1:]
    if len(shifts) == 1:
        p = probs[0][np.arange(len(targets)), targets]
    else:
        p = mix(np.stack(probs, axis=1), np.stack(tables), np.stack(live, axis=1))[np.arange(len(targets)), targets]
    nll = -np.log(p)
    lower = np.arange(len(nll)) % 4 > 0                 # target i is cell i: voice i % 4
    if not lower.any():
        raise ValueError("the grid has no steps to score")
    if total:
        return float(nll[lower].sum()), int(lower.sum())
    return float(nll[lower].mean())


def _condition(model, soprano, n_tokens):
    """The condition tokens of a soprano for a model that reads ahead, else None."""
    return condition_of(model.tokenizer, soprano, n_tokens, ahead(model)) if ahead(model) else None


# --------------------------------------------------------------------------- 1. the melody

@dataclass(frozen=True)
class Melody:
    """A melody read for harmonization.

    mid, score : the whole file (mido tracks as read, and its Score with drums).
    track : the melody's TrackInfo (index, name, channel, program, velocity).
    notes : the melody notes harmonized (NOTE_DTYPE, the top voice of the passage).
    soprano : int (S,) the soprano at each sixteenth in the model's pitches (-1 silent).
    origin : tick of step 0 (the beat of the first note); step_ticks : ticks per sixteenth.
    shift : semitones the melody was moved for the model (a multiple of 12 when it can be).
    messages : what a user should know about how the melody was read.
    """
    mid: mido.MidiFile
    score: Score
    track: object
    notes: np.ndarray
    soprano: np.ndarray
    origin: int
    step_ticks: float
    shift: int
    messages: tuple

    def tick(self, steps):
        """Ticks of the file at step positions (int array)."""
        return self.origin + np.round(np.asarray(steps) * self.step_ticks).astype(np.int64)


def read_melody(source, *, track=None, bars=None, model_range=(36, 81)):
    """Read the melody to harmonize from a MIDI file (see :class:`Melody`).

    ``track``: an index or name (see ``select.keep_tracks``); None: the file's only
    pitched track.  ``bars``: (first, last) bars counted from 1, or None.
    MusicAttnError for a melody that cannot be harmonized.
    """
    mid, score = load_prompt(source)
    tracks = [t for t in prompt_tracks(mid, score) if not t.is_drums]
    info = _melody_track(tracks, score, track, source)
    notes = score.notes[score.notes["track"] == info.index]
    notes = notes[notes["channel"] != DRUM_CHANNEL]
    messages = []
    if bars is not None:
        bar, _ = select.bars_and_beats(notes, score.time_signatures, score.ticks_per_beat)
        notes = notes[select.passage_mask(bar, notes["start"], bars=bars)]
        if not len(notes):
            raise MusicAttnError(f"{source}: bars {bars[0]}:{bars[1]} of track {info.describe()} hold no notes")
    top = select.top_voice(dataclasses.replace(score, notes=notes)).notes
    if len(top) < len(notes):
        messages.append(f"the melody track holds chords: its top voice ({len(top)} notes) is harmonized, "
                        f"{len(notes) - len(top)} notes under it are kept but not read")
    tpb = score.ticks_per_beat
    origin = int(top["start_tick"].min()) // tpb * tpb
    step = tpb / STEPS_PER_BEAT
    start = np.floor((top["start_tick"] - origin) / step + 0.5).astype(np.int64)
    end = np.maximum(np.floor((top["end_tick"] - origin) / step + 0.5).astype(np.int64), start + 1)
    S = int(end.max())
    if S > MAX_STEPS:
        raise MusicAttnError(f"{source}: the melody is {S / 16:,.0f} bars of 4/4 long; harmonize takes at most "
                             f"{MAX_STEPS // 16} at a time: choose a passage with --bars FIRST:LAST")
    off_grid = int(np.sum((top["start_tick"] - origin) * STEPS_PER_BEAT % tpb != 0))
    if off_grid:
        messages.append(f"{off_grid} melody notes start off the sixteenth-note grid (triplets, grace notes): "
                        "the model reads them at the nearest sixteenth; the file keeps them as they are")
    soprano = np.full(S, -1, np.int64)
    for i in np.argsort(start, kind="stable"):
        soprano[start[i]:end[i]] = top["pitch"][i]
    shift = _range_shift(top["pitch"], model_range, source)
    if shift:
        messages.append(f"the melody is moved {_semitones(shift)} for the model, and the voices back")
    soprano = np.where(soprano >= 0, soprano + shift, -1)
    return Melody(mid, score, info, top, soprano, origin, step, shift, tuple(messages))


def _melody_track(tracks, score, spec, source):
    if not tracks:
        raise MusicAttnError(f"{source}: no pitched notes to harmonize")
    if spec is None:
        if len(tracks) > 1:
            listing = ", ".join(t.describe() for t in tracks)
            raise MusicAttnError(f"{source}: {len(tracks)} tracks hold notes; choose the melody with "
                                 f"--track N|NAME ({listing})")
        return tracks[0]
    index = int(select.keep_tracks(score, [spec], select.track_names(score)).notes["track"][0])
    found = [t for t in tracks if t.index == index]
    if not found:
        raise MusicAttnError(f"{source}: track {spec!r} holds only drums")
    return found[0]


def _range_shift(pitches, model_range, source):
    """Semitones that bring the melody into the soprano's range: octaves if they can, else
    any shift that fits the model; MusicAttnError when none does."""
    low, high = int(pitches.min()), int(pitches.max())

    def cost(shift):     # notes outside the soprano range, then outside the model, then distance
        lo, hi = low + shift, high + shift
        outside = max(SOPRANO_RANGE[0] - lo, 0) + max(hi - SOPRANO_RANGE[1], 0)
        unfit = lo < model_range[0] or hi > model_range[1]
        return unfit, outside, abs(shift)
    best = min([12 * k for k in range(-5, 6)], key=cost)
    if cost(best)[1]:
        best = min(range(-60, 61), key=lambda s: (cost(s)[0], cost(s)[1], s % 12 != 0, abs(s)))
    if cost(best)[0]:
        raise MusicAttnError(f"{source}: the melody spans {high - low} semitones "
                             f"({low}..{high}); the model's voices span {model_range[0]}..{model_range[1]}")
    return best


def _semitones(shift):
    octaves, rest = divmod(abs(shift), 12)
    way = "up" if shift > 0 else "down"
    if not rest:
        return f"{way} {octaves} octave{'s' if octaves > 1 else ''}"
    return f"{way} {abs(shift)} semitone{'s' if abs(shift) > 1 else ''}"


# --------------------------------------------------------------------------- 2. the voices

def rule_mask(voice, cur, prev, pitches):
    """bool (P,): which candidate pitches voice ``voice`` (1 alto .. 3 bass) may take.

    cur : int (4,) this step, voices above ``voice`` filled (-1 silent);
    prev : int (4,) the step before (all -1 at the start); pitches : int (P,) candidates.
    """
    ok = np.ones(len(pitches), bool)
    low, high = RANGES[VOICE_NAMES[voice]]
    ok &= (pitches >= low) & (pitches <= high)
    above = cur[voice - 1]
    if above >= 0:
        ok &= pitches <= above                                    # no crossing
        if voice < 3:
            ok &= above - pitches <= 12                           # upper voices within an octave
    if prev[voice] < 0:
        return ok
    dv = pitches - prev[voice]
    for upper in range(voice):
        if cur[upper] < 0 or prev[upper] < 0:
            continue
        du = cur[upper] - prev[upper]
        same_way = du * dv > 0
        before, after = (prev[upper] - prev[voice]) % 12, (cur[upper] - pitches) % 12
        if before in (0, 7):
            ok &= ~(same_way & (after == before))                 # parallel fifths and octaves
        if upper == 0 and voice == 3 and abs(du) > 2 and before != 0:
            ok &= ~(same_way & (after == 0))                      # hidden octaves to the bass
    return ok


def sample_voices(model, soprano, *, num_samples=1, rng=None, temperature=TEMPERATURE, top_p=None,
                  rules=True, keys=KEYS):
    """Alto, tenor and bass under ``soprano`` (int (S,), model pitches, -1 silent).

    ``rng``: an int seed (sample i draws with seed + i), a Generator, or a list of
    Generators, one per sample (then ``num_samples`` is its length).
    ``keys``: each cell is drawn from the mean of the model's distributions in this many
    keys around the written one (:mod:`~music_attn.runtime.keys`), the distribution
    :func:`harmonization_nll` scores.
    Returns (grids int (N, S, 4) in model pitches, log-probabilities (N,) of the drawn cells).
    With ``rules``, cells that break the rules of :func:`rule_mask` (and rests under a
    sounding soprano) get probability zero; a cell with no legal pitch is drawn freely.
    A cell is always a pitch or a rest (the model's other tokens are never drawn).
    """
    tok = model.tokenizer
    rngs = list(rng) if isinstance(rng, (list, tuple)) else _rngs(rng, int(num_samples))
    S, N = len(soprano), len(rngs)
    soprano = np.asarray(soprano, dtype=np.int64)
    shifts = fitting_shifts(keys, soprano, tok.pitch_range)
    K = len(shifts)
    if N > 1 and N * K > ROWS:                          # in parts: each row draws from its own generator
        per = max(1, ROWS // K)
        parts = [sample_voices(model, soprano, rng=rngs[i:i + per], temperature=temperature, top_p=top_p,
                               rules=rules, keys=keys) for i in range(0, N, per)]
        return np.concatenate([g for g, _ in parts]), np.concatenate([lp for _, lp in parts])
    tables = np.stack([shift_table(tok, s) for s in shifts])                 # (K, V)
    n_tokens = 1 + 4 * S
    cond = _condition(model, soprano, n_tokens)
    cond = None if cond is None else tables[:, cond]                          # (K, n, C) in each key
    sop_ids = tables[:, tok.grid_ids(np.column_stack([soprano, np.full((S, 3), -1)]))[:, 0]]   # (K, S)
    low = tok.pitch_range[0]
    pitches = np.arange(low, tok.pitch_range[1] + 1)
    pitch_ids = tok.grid_ids(np.column_stack([pitches, np.full((len(pitches), 3), -1)]))[:, 0]
    grids = np.repeat(np.column_stack([soprano, np.full((S, 3), -1)])[None], N, axis=0)   # (N, S, 4)
    logp = np.zeros(N)
    live = np.ones((N, K), bool)                        # row n * K + k: sample n read in key k
    cell_tokens = np.zeros(model.config.vocab_size, bool)
    cell_tokens[np.append(pitch_ids, tok.rest_id)] = True
    with single_threaded_blas():
        start = np.stack([np.full(K, tok.bos_id), sop_ids[:, 0]], axis=1)        # (K, 2)
        reader = _Reader(model, np.tile(start, (N, 1)), cond, np.tile(np.arange(K), N))
        for t in range(S):
            for v in (1, 2, 3):
                allowed = cell_tokens                           # a lower cell is a pitch or a rest
                if rules:
                    allowed = np.stack([_allowed(grids[i], t, v, pitches, pitch_ids, tok.rest_id,
                                                 model.config.vocab_size) for i in range(N)])
                logits = reader.logits
                if K > 1:
                    probs = np.exp(log_softmax(np.asarray(logits, np.float64))).reshape(N, K, -1)
                    with np.errstate(divide="ignore"):
                        logits = np.log(mix(probs, tables, live))
                probs = next_token_distribution(logits, temperature, None, top_p, allowed=allowed)
                cells = _draw(probs, rngs)
                logp += np.log(probs[np.arange(N), cells])
                grids[:, t, v] = np.where(cells == tok.rest_id, -1, cells - pitch_ids[0] + low)
                moved = tables[:, cells].T                                           # (N, K)
                live &= moved >= 0
                reader.push(np.where(moved >= 0, moved, tok.rest_id).reshape(-1))
            if t + 1 < S:
                reader.push(np.tile(sop_ids[:, t + 1], N))
    return grids, logp


class _Reader:
    """Next-token logits (R, V) of R grid sequences growing in step, with their condition tokens.

    ``cond`` (K, n, C) holds the condition tokens of each key (None: no condition) and
    ``row_key`` (R,) the key of each row.  The KV cache holds up to ``max_len`` tokens;
    then the window restarts at the next multiple of half a window (and of the model's
    period), read again from an empty cache.
    """

    def __init__(self, model, context, cond, row_key):
        self.model, self.cond, self.row_key, self.offset = model, cond, np.asarray(row_key), 0
        self.seq = np.asarray(context, np.int64)                                     # (R, T)
        self.cache = model.new_cache(len(self.seq))
        self._restart()

    def _restart(self):
        self.cache.reset()
        n = self.seq.shape[1]
        c = None if self.cond is None else self.cond[self.row_key, self.offset:self.offset + n]
        self.logits = self.model.forward(self.seq, cache=self.cache, condition=c)[:, -1]

    def push(self, tokens):
        L = self.model.config.max_len
        self.seq = np.concatenate([self.seq, np.asarray(tokens, np.int64)[:, None]], axis=1)
        position = self.offset + self.seq.shape[1] - 1
        if self.seq.shape[1] > L:
            start = window_start(position, L, align=alignment(self.model))
            self.seq, self.offset = self.seq[:, start - self.offset:], start
            self._restart()
            return
        c = None if self.cond is None else self.cond[self.row_key, position]
        self.logits = self.model.decode(self.seq[:, -1], self.cache, condition=c)


def _allowed(grid, t, v, pitches, pitch_ids, rest_id, V):
    """bool (V,) tokens allowed for voice v at step t of one grid under the rules."""
    allowed = np.zeros(V, bool)
    prev = grid[t - 1] if t > 0 else np.full(4, -1)
    ok = rule_mask(v, grid[t], prev, pitches)
    allowed[pitch_ids[ok]] = True
    allowed[rest_id] = grid[t, 0] < 0                    # a lower voice rests only with the soprano
    if not allowed.any():                                # no legal pitch: any pitch or rest
        allowed[pitch_ids] = allowed[rest_id] = True
    return allowed


def _rngs(seed, n):
    """One Generator per sample: sample i of seed s draws as a single run of seed s + i does."""
    if isinstance(seed, np.random.Generator):
        return [seed] if n == 1 else [np.random.default_rng(s) for s in seed.integers(0, 2 ** 63, n)]
    seed = 0 if seed is None else int(seed)
    return [np.random.default_rng(seed + i) for i in range(n)]


def _draw(probs, rngs):
    """One token per row of probs (N, V) by inverse CDF, row i drawing from ``rngs[i]``."""
    cdf = np.cumsum(probs, axis=-1)
    u = np.array([r.random() for r in rngs])[:, None] * cdf[:, -1:]
    return np.minimum(np.sum(cdf <= u, axis=-1), probs.shape[1] - 1)


# --------------------------------------------------------------------------- 3. the file

@dataclass(frozen=True, eq=False)
class Harmonization(Score):
    """The harmonized file: a Score (melody + Alto, Tenor, Bass) that writes the input file as it
    was plus the three new tracks.

    midi : the mido.MidiFile :meth:`write` writes.
    grid : int (S, 4) soprano, alto, tenor and bass per sixteenth, in the file's pitches.
    voice_leading : the VoiceLeading of ``grid``.
    messages : how the melody was read (see :class:`Melody`).
    """
    midi: object = None
    grid: np.ndarray = None
    voice_leading: object = None
    messages: tuple = ()
    rules: bool = True

    def write(self, path):
        """Write the harmonization to ``path`` atomically (the input file's messages, unchanged)."""
        write_midi(path, self.midi)

    def describe(self):
        """One line: what was harmonized, then the voice leading of it."""
        bars = len(self.voice_leading.bars)
        how = "with voice-leading rules" if self.rules else "the model alone"
        return (f"alto, tenor and bass under {bars} bar{'s' * (bars != 1)} of melody ({how})\n"
                f"  {self.voice_leading.summary()}")


def harmony_file(melody, grid):
    """mido.MidiFile: the input's tracks (other note tracks kept as their meta events only)
    and Alto, Tenor and Bass from ``grid`` (int (S, 4), the file's pitches)."""
    mid, info = melody.mid, melody.track
    out = mido.MidiFile(type=1, ticks_per_beat=mid.ticks_per_beat, charset=mid.charset)
    for index, track in enumerate(mid.tracks):
        out.tracks.append(mido.MidiTrack(track) if index == info.index or mid.type == 0
                          else _meta_only(track))
    used = {m.channel for t in out.tracks for m in t if hasattr(m, "channel")}
    free = [c for c in range(16) if c != DRUM_CHANNEL and c not in used] or [info.channel] * 3
    for v, name in enumerate(VOICE_TRACKS, start=1):
        out.tracks.append(_voice_track(melody, grid[:, v], name, free[min(v - 1, len(free) - 1)]))
    return out


def _meta_only(track):
    """A track's meta events (tempo, metre, key...) at their ticks, its channel messages left out."""
    out, now, last = mido.MidiTrack(), 0, 0
    for msg in track:
        now += msg.time
        if msg.is_meta:
            out.append(msg.copy(time=now - last))
            last = now
    return out


def _voice_track(melody, column, name, channel):
    """One voice's MidiTrack: name, program, its notes (a run of one pitch = one note)."""
    change = np.flatnonzero(np.diff(np.concatenate(([-1], column, [-1]))) != 0)
    runs = [(a, b) for a, b in zip(change[:-1], change[1:]) if column[a] >= 0]
    first, last = (np.array(x, dtype=np.int64) for x in zip(*runs)) if runs else (np.zeros(0, np.int64),) * 2
    start, end = melody.tick(first), melody.tick(last)
    pitch = column[first] if runs else np.zeros(0, np.int64)
    events = [(0, -2, mido.MetaMessage("track_name", name=name)),
              (0, -1, mido.Message("program_change", program=melody.track.program, channel=channel))]
    events += _note_messages(start, end, pitch, np.full(len(start), melody.track.velocity), channel)
    return _track(events)


# --------------------------------------------------------------------------- the job

def harmonize(melody, *, model=None, seed=None, num_samples=1, track=None, bars=None, rules=True,
              temperature=TEMPERATURE, candidates=None, keys=KEYS):
    """Add alto, tenor and bass under a melody, in the style of Bach's chorales.

    Parameters
    ----------
    melody : path of a MIDI file (or a mido.MidiFile): one track of notes, or ``track``.
    model : a harmonizer Model or a checkpoint path (None: the shipped harmonizer).
    seed : int seed (or np.random.Generator) of the sampling; the same seed gives the same
        voices, and sample i of ``num_samples`` is what a single run with ``seed + i`` gives.
    num_samples : harmonizations to sample (a list is returned when it is not 1).
    track : the melody's track (index or name) in a file of several.
    bars : (first, last) bars (from 1) to harmonize; None: the whole melody.
    rules : forbid parallel fifths and octaves, hidden octaves to the bass, crossing, wide
        spacing and notes out of range while sampling (``False``: the model alone).
    temperature : sampling temperature.
    candidates : voicings drawn per harmonization, the best kept (fewest faults, then most
        complete triads and sevenths, then most likely); default :data:`CANDIDATES` with the
        rules, 1 without (the model alone).
    keys : keys the model reads the melody in, its distributions averaged
        (:mod:`~music_attn.runtime.keys`; 1: the written key only).

    Returns
    -------
    Harmonization (a Score; ``.write(path)``), or a list of ``num_samples`` of them.
    The melody's notes are kept exactly, with the file's tempo map, metres, key
    signatures and ticks per beat.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or not 1 <= num_samples <= 64:
        raise ValueError(f"num_samples must be an integer in 1..64, got {num_samples!r}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature <= 10):
        raise ValueError(f"temperature must be a number in (0, 10], got {temperature!r}")
    k = (CANDIDATES if rules else 1) if candidates is None else candidates
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 16:
        raise ValueError(f"candidates must be an integer in 1..16, got {k!r}")
    key_shifts(keys)                                   # a bad value fails before any work
    model = load_harmonizer(model) if model is None or not hasattr(model, "forward") else model
    read = read_melody(melody, track=track, bars=bars, model_range=model.tokenizer.pitch_range)
    rngs = [g for i in range(num_samples) for g in _candidate_rngs(seed, i, k)]
    grids, logp = sample_voices(model, read.soprano, rng=rngs, temperature=temperature, rules=rules,
                               keys=keys)
    out = [_harmonization(read, _best(grids[i * k:(i + 1) * k], logp[i * k:(i + 1) * k]), rules)
           for i in range(num_samples)]
    return out[0] if num_samples == 1 else out


def _candidate_rngs(seed, i, k):
    """The generators of sample i's k candidates: from seed + i alone (one candidate: that seed)."""
    if isinstance(seed, np.random.Generator):
        return [seed] if k == 1 and i == 0 else [np.random.default_rng(s) for s in seed.integers(0, 2 ** 63, k)]
    base = (0 if seed is None else int(seed)) + i
    return [np.random.default_rng(base)] if k == 1 else [np.random.default_rng([base, c]) for c in range(k)]


def best_voicing(grids, logp):
    """Index of the grid (N, S, 4) a chorale teacher would keep: fewest faults (parallels,
    hidden octaves, crossing, spacing, range), then most complete chords, then most likely."""
    def key(i):
        c = voice_leading(grids[i]).counts
        faults = c["parallels"] + c["hidden_octaves"] + c["crossing"] + c["spacing"] + c["out_of_range"]
        return faults, c["incomplete"] / max(c["chord_steps"], 1), -logp[i]
    return min(range(len(grids)), key=key)


def _best(grids, logp):
    return grids[best_voicing(grids, logp)]


def _harmonization(melody, grid, rules=True):
    """The Harmonization of one sampled grid (model pitches)."""
    grid = np.where(grid >= 0, grid - melody.shift, -1)
    midi = harmony_file(melody, grid)
    score = read_midi(midi, include_drums=True)
    fields = {f.name: getattr(score, f.name) for f in dataclasses.fields(Score)}
    report = voice_leading(grid, _bars_of_steps(melody, len(grid)))
    return Harmonization(**fields, midi=midi, grid=grid, voice_leading=report, messages=melody.messages,
                         rules=rules)


def _bars_of_steps(melody, S):
    """Bar (from 1) of each step of the melody's grid, by the file's metres."""
    ticks = np.zeros(S, dtype=[("start_tick", np.int64)])
    ticks["start_tick"] = melody.tick(np.arange(S))
    bar, _ = select.bars_and_beats(ticks, melody.score.time_signatures, melody.score.ticks_per_beat)
    return bar


def analyze_file(source):
    """(VoiceLeading, how the voices were found) of a four-voice MIDI file, bars by its metres."""
    score = read_midi(source)
    tracks = np.unique(score.notes["track"])
    if not len(score.notes):
        raise MusicAttnError(f"{source}: no notes to analyze")
    grid, _ = GridTokenizer(pitch_range=(0, 127))._score_grid(score)
    how = (f"from its {len(tracks)} tracks" if len(tracks) == 4 else
           f"from the notes sounding together (the file has {len(tracks)} tracks of notes, not 4)")
    ticks = np.zeros(len(grid), dtype=[("start_tick", np.int64)])
    ticks["start_tick"] = np.round(np.arange(len(grid)) * score.ticks_per_beat / STEPS_PER_BEAT)
    bar, _ = select.bars_and_beats(ticks, score.time_signatures, score.ticks_per_beat)
    return voice_leading(grid, bar), how
