"""music_attn: attention over music.

MIDI files become event tokens; tokens pass through a numpy decoder-only
transformer built on a masked multi-head attention core; out come attention
maps over the notes of a melody, next-token probabilities and sampled
continuations written back to MIDI.
"""

from music_attn.core.attention import (
    attention_mask,
    compute_qkv,
    multi_head_attention,
    scaled_dot_product_attention,
    self_attention,
    soft_align_attention,
    softmax,
)
from music_attn.runtime.checkpoint import load_checkpoint, load_model, save_checkpoint
from music_attn.training.data import load_corpus, shipped_melodies, tokenize_folder
from music_attn.errors import CheckpointError, MidiError, MusicAttnError, OutputError, TokenizerError
from music_attn.runtime.continue_midi import Continued, continue_midi
from music_attn.runtime.generate import generate, sample_next
from music_attn.inspect.inspector import AttentionMaps, attention_maps
from music_attn.music.midi import Score, read_midi, write_midi
from music_attn.core.model import Model, ModelConfig, init_model
from music_attn.core.positional import apply_rope, relative_logits, sinusoidal, skew
from music_attn.music.tokenizers import GridTokenizer
from music_attn.music.tokenizers import (
    PerformanceTokenizer,
    RemiTokenizer,
    TokenSequence,
    load_tokenizer,
)
from music_attn.training.train import TrainConfig, train
from music_attn.music.voice_leading import voice_leading
from music_attn.runtime.harmonize import harmonization_nll, harmonize

__all__ = [
    # the interview API
    "compute_qkv", "self_attention", "multi_head_attention",
    # the attention core
    "softmax", "attention_mask", "scaled_dot_product_attention", "soft_align_attention",
    "sinusoidal", "apply_rope", "relative_logits", "skew",
    # music
    "read_midi", "write_midi", "Score", "RemiTokenizer", "PerformanceTokenizer", "GridTokenizer", "TokenSequence",
    "load_tokenizer", "tokenize_folder", "load_corpus", "shipped_melodies",
    # the model
    "ModelConfig", "Model", "init_model", "load_model", "save_checkpoint", "load_checkpoint",
    "TrainConfig", "train", "generate", "sample_next", "continue_midi", "Continued",
    # harmonizing
    "harmonize", "harmonization_nll", "voice_leading",
    # looking inside
    "attention_maps", "AttentionMaps",
    # errors
    "MusicAttnError", "MidiError", "TokenizerError", "CheckpointError", "OutputError",
]
