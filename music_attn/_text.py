"""Text from files made safe to show: no terminal control, no hidden change of direction.

File names, track names, lyrics and markers come from whoever made the file.
Before any of it reaches a terminal, a page or JSON, the characters that would
act instead of being read are shown as escapes (``\\x1b``, ``\\u202e``):

* :func:`for_terminal` -- C0 and C1 control characters (ESC, BEL, backspace,
  ...; not newline, tab or carriage return), DEL, and the bidi controls;
* :func:`without_bidi` -- the Unicode bidi controls only (LRE, RLE, PDF, LRO,
  RLO, LRI, RLI, FSI, PDI, LRM, RLM, ALM), which would reverse the text around
  them on a page (HTML escaping already takes care of markup).

:class:`SafeStream` applies :func:`for_terminal` to everything written to a
text stream: the command line wraps stdout and stderr in it, so no message, warning
or progress line can carry a raw control from a file.
"""

__all__ = ["BIDI_CONTROLS", "for_terminal", "without_bidi", "SafeStream"]

BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_KEPT = "\n\t\r"


def _escape(code):
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_BIDI_TABLE = {ord(c): _escape(ord(c)) for c in BIDI_CONTROLS}
_TERMINAL_TABLE = {**{c: _escape(c) for c in [*range(0x20), *range(0x7f, 0xa0)] if chr(c) not in _KEPT},
                   **_BIDI_TABLE}


def for_terminal(text):
    """``text`` with control characters and bidi controls written as escapes (newline, tab, CR kept)."""
    return str(text).translate(_TERMINAL_TABLE)


def without_bidi(text):
    """``text`` with the bidi control characters written as escapes (``\\u202e``)."""
    return str(text).translate(_BIDI_TABLE)


class SafeStream:
    """A text stream wrapper whose ``write`` passes text through :func:`for_terminal`."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        return self._stream.write(for_terminal(text))

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)
