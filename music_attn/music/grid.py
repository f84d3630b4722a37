"""Old import path of the four-voice grid tokenizer, now :mod:`music_attn.music.tokenizers.grid`."""

from music_attn.music.tokenizers.grid import *  # noqa: F401,F403
from music_attn.music.tokenizers.grid import __all__  # noqa: F401
