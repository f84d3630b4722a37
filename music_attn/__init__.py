"""music_attn: attention over music.

MIDI files become event tokens; tokens pass through a numpy decoder-only
transformer built on a masked multi-head attention core; out come attention
maps over the notes of a melody, next-token probabilities and sampled
continuations written back to MIDI.
"""

from music_attn.errors import CheckpointError, MidiError, MusicAttnError, TokenizerError

__all__ = ["MusicAttnError", "MidiError", "TokenizerError", "CheckpointError"]
