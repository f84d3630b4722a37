"""The tokenizer registry: a config's ``type`` name -> its class.

Checkpoints and tokenizer JSON files store ``{"type": "remi", ...}``;
:meth:`~music_attn.music.tokenizers.base.Tokenizer.from_dict` looks the name up
here.  A tokenizer module registers its class with ``@register`` (under its
``kind``); importing :mod:`music_attn.music.tokenizers` imports them all.
"""

__all__ = ["TOKENIZER_TYPES", "register"]

TOKENIZER_TYPES = {}
"""``type`` of a tokenizer config -> its class."""


def register(cls):
    """Class decorator: enter ``cls`` in :data:`TOKENIZER_TYPES` under ``cls.kind``."""
    TOKENIZER_TYPES[cls.kind] = cls
    return cls
