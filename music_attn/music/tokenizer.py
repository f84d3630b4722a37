"""Old import path of the tokenizers, kept for code written before :mod:`music_attn.music.tokenizers`."""

from music_attn.music.tokenizers import *  # noqa: F401,F403
from music_attn.music.tokenizers import __all__  # noqa: F401
