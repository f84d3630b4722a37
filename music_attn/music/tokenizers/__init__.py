"""Tokenizers: MIDI notes <-> integer ids, one tokenizer per module, all registered by type name.

* :mod:`.base` -- the shared :class:`Tokenizer` (vocabulary, config I/O, decode, grammar);
* :mod:`.remi` -- :class:`RemiTokenizer` (Huang & Yang 2020: Bar, Position, Pitch, Velocity, Duration);
* :mod:`.performance` -- :class:`PerformanceTokenizer` (Oore et al. 2018: NoteOn, NoteOff, TimeShift);
* :mod:`.grid` -- :class:`GridTokenizer` (four voices on a sixteenth-note grid, the JSB Chorales);
* :mod:`.registry` -- ``type`` name -> class, for configs and checkpoints.
"""

from music_attn.music.tokenizers.base import (
    DecodeResult,
    GrammarState,
    Tokenizer,
    TokenSequence,
    load_tokenizer,
    tempo_values,
    velocity_values,
)
from music_attn.music.tokenizers.grid import GRID_PITCH_RANGE, STEPS_PER_BEAT, VOICES, GridTokenizer, grid_notes
from music_attn.music.tokenizers.performance import PerformanceTokenizer
from music_attn.music.tokenizers.registry import TOKENIZER_TYPES
from music_attn.music.tokenizers.remi import RemiTokenizer

__all__ = ["Tokenizer", "RemiTokenizer", "PerformanceTokenizer", "GridTokenizer", "TokenSequence", "DecodeResult",
           "GrammarState", "TOKENIZER_TYPES", "load_tokenizer", "velocity_values", "tempo_values",
           "VOICES", "GRID_PITCH_RANGE", "STEPS_PER_BEAT", "grid_notes"]
