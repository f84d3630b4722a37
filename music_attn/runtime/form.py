"""Form in a sampled continuation: where it starts, and how it ends.

Masks applied on top of the tokenizer's grammar (REMI), one sample at a time:

* ``start_bar``: the first new token is a Bar, so a prompt that ends at a bar
  line never gets new notes in its last bar.
* ``repeat`` = p: at each new bar line, with probability p, the bar replays an
  earlier bar note for note (pitch, position, length), then closes.  Which bar:
  the one a phrase earlier.  The distance is drawn from how far back the
  repeated bars of the folk corpus's training tunes look (4 bars in 62% of
  cases, 2 in 14%, 8 in 12%); a bar that follows a replayed one replays the
  bar at the same distance, so whole phrases come back (A A', AABA).  A
  replayed token the grammar forbids ends the replay there.
* ``ending`` = (tonic pitch class, mode): the continuation closes with a
  cadence in its last bar.  In the penultimate bar, notes on the last beat
  are steered to the dominant (scale degrees 2, 5 and 7); the last bar holds
  one note, the tonic nearest the previous note, from the bar's first free
  position to its end, and then the piece ends (EOS).

One line at a time (no chords, no overlaps) is the grammar's own
``one_line`` option (:class:`~music_attn.music.tokenizers.remi.RemiTokenizer`).

Shape legend: V vocab.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from music_attn.music.tokenizers.base import DURATION, PITCH, POSITION, PROGRAM, VELOCITY

__all__ = ["Form", "dominant_pitch_classes", "REPEAT_DISTANCES"]

# How far back (bars) a repeated bar of a tune looks: bars 5-12 of 1,500 training tunes of the
# folk corpus that repeat an earlier bar note for note, by distance to the nearest such bar.
REPEAT_DISTANCES = {1: 74, 2: 271, 3: 42, 4: 1168, 5: 25, 6: 51, 7: 12, 8: 218, 9: 8, 10: 5}
_REPLAYED = (POSITION, PITCH, VELOCITY, DURATION, PROGRAM)      # token kinds a replayed bar copies

_MAJOR_DOMINANT = (2, 7, 11)        # degrees 2, 5, 7 of the major scale, above the tonic
_MINOR_DOMINANT = (2, 7, 10, 11)    # and the minor's subtonic and leading note


def dominant_pitch_classes(key):
    """Pitch classes of the dominant (V / vii) of ``key`` = (tonic pitch class, mode): a set."""
    tonic, mode = key
    return {(tonic + step) % 12 for step in (_MINOR_DOMINANT if mode == "minor" else _MAJOR_DOMINANT)}


@dataclass(frozen=True)
class Form:
    """Constraints of form for :func:`~music_attn.runtime.generate.generate` (REMI tokens)."""

    start_bar: bool = False
    ending: Optional[tuple] = None          # (tonic pitch class, "major" | "minor")
    repeat: float = 0.0                     # probability that a new bar replays an earlier one

    def __post_init__(self):
        if not 0.0 <= self.repeat <= 1.0:
            raise ValueError(f"repeat must lie in [0, 1], got {self.repeat}")

    def replay(self, tokenizer, history, bars, n_bars, last_distance, rng):
        """(tokens, distance) of the bar to replay at a new bar line, or ([], None).

        ``history`` : the token lists of the bars so far (prompt included), the last
        one the bar just begun (empty); ``bars`` : new bars begun, this one included;
        ``last_distance`` : the distance the bar before replayed from (None if it did
        not).  The tokens are the earlier bar's notes and a closing Bar.
        """
        if not self.repeat or rng is None or len(history) < 2:
            return [], None
        if self.ending is not None and n_bars is not None and bars >= n_bars - 1:
            return [], None                                       # the cadence shapes the last two bars
        if rng.random() >= self.repeat:
            return [], None
        keep = np.logical_or.reduce([tokenizer.kind_mask(kind) for kind in _REPLAYED])   # (V,) what it copies
        pitch = tokenizer.kind_mask(PITCH)
        earlier = {d: [t for t in history[-1 - d] if keep[t]] for d in REPEAT_DISTANCES if d < len(history)}
        earlier = {d: tokens for d, tokens in earlier.items() if pitch[tokens].any()}
        if not earlier:
            return [], None
        if last_distance in earlier:
            distance = last_distance
        else:
            options = sorted(earlier)
            weights = np.array([REPEAT_DISTANCES[d] for d in options], float)
            distance = options[int(rng.choice(len(options), p=weights / weights.sum()))]
        return earlier[distance] + [tokenizer.bar_id], distance

    def restrict(self, tokenizer, grammar, new, bars, n_bars, allowed):
        """``allowed`` (V,) bool narrowed for a sample that has taken ``new`` tokens and ``bars`` Bars."""
        if self.start_bar and not new:
            return _only(allowed, tokenizer.bar_id)
        if self.ending is None or n_bars is None or grammar is None:
            return allowed
        if bars == n_bars:
            return self._last_bar(tokenizer, grammar, allowed)
        if bars == n_bars - 1 and grammar.state == grammar.POS:
            last_beat = grammar.position >= grammar.bar_length - tokenizer.positions_per_beat
            if last_beat:
                return _prefer(allowed, _pitches_in(tokenizer, dominant_pitch_classes(self.ending)))
        return allowed

    def _last_bar(self, tok, g, allowed):
        """The last bar: one tonic note at the first free position, held to the bar end, then EOS."""
        if g.state in (g.BAR_S, g.SIG):                          # where the final note starts
            positions = np.flatnonzero(allowed & tok.kind_mask(POSITION))
            return _only(allowed, positions[0] if positions.size else tok.eos_id)
        if g.state == g.POS:                                     # which note: the tonic
            tonic = _pitches_in(tok, {self.ending[0]})
            if g.notes:
                near = np.abs(tok.pitch_of() - g.notes[-1][2]) <= 7
                tonic = _prefer(tonic & allowed, near)
            return _prefer(allowed, tonic)
        durations = allowed & tok.kind_mask(DURATION)
        if durations.any():                                      # how long: to the bar end
            held = min(g.bar_length - g.position, tok.max_duration)
            return _prefer(durations, tok.kind_mask(DURATION, held))
        if g.state == g.DUR:                                     # the final note is written
            return _only(allowed, tok.eos_id)
        return allowed


def _pitches_in(tok, pitch_classes):
    """bool (V,): pitch tokens whose pitch class is in ``pitch_classes``."""
    pitches = tok.pitch_of()
    return (pitches >= 0) & np.isin(pitches % 12, sorted(pitch_classes))


def _only(allowed, token):
    """Only ``token``, when the grammar allows it; otherwise ``allowed`` as it was."""
    if not allowed[token]:
        return allowed
    out = np.zeros_like(allowed)
    out[token] = True
    return out


def _prefer(allowed, *conditions):
    """``allowed`` narrowed by each condition in turn, skipping one that would leave nothing."""
    out = allowed.copy()
    for condition in conditions:
        narrowed = out & condition
        if narrowed.any():
            out = narrowed
    return out
