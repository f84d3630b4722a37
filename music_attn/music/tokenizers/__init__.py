"""Tokenizers: MIDI notes <-> integer ids, one tokenizer per module, all registered by type name."""

from music_attn.music.tokenizers.base import (
    TOKENIZER_TYPES,
    DecodeResult,
    GrammarState,
    PerformanceTokenizer,
    RemiTokenizer,
    Tokenizer,
    TokenSequence,
    load_tokenizer,
    tempo_values,
    velocity_values,
)
from music_attn.music.tokenizers.grid import GRID_PITCH_RANGE, STEPS_PER_BEAT, VOICES, GridTokenizer, grid_notes

__all__ = ["Tokenizer", "RemiTokenizer", "PerformanceTokenizer", "GridTokenizer", "TokenSequence", "DecodeResult",
           "GrammarState", "TOKENIZER_TYPES", "load_tokenizer", "velocity_values", "tempo_values",
           "VOICES", "GRID_PITCH_RANGE", "STEPS_PER_BEAT", "grid_notes"]
