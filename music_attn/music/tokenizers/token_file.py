"""Token files: the JSON that ``music-attn tokenize --json`` writes and ``decode`` reads back.

One object per sequence: the tokenizer config, the token strings, the ids and the note
alignment (``note_of_token``), optionally statistics.  Reading accepts that JSON (one
object, or a list from which ``item`` picks one, 1-based) or a bare list of ids or token
strings; the token strings win over the ids, so a hand-edited file works.
"""

import json
import sys

from music_attn._io import check_input, read_input
from music_attn.errors import TokenizerError, input_error_message, shorten
from music_attn.music.tokenizers.base import Tokenizer

__all__ = ["MAX_TOKEN_FILE", "token_document", "token_stats", "stats_table", "encode_files", "read_token_file"]

MAX_TOKEN_FILE = 64 * 2**20          # bytes of token JSON read at most


def token_stats(seq):
    """Notes, tokens, tokens per note, seconds and drum notes left out of a TokenSequence."""
    n_notes, n_tokens = len(seq.notes), len(seq)
    seconds = float(seq.notes["end"].max()) if n_notes else 0.0
    return {"notes": n_notes, "tokens": n_tokens, "tokens_per_note": n_tokens / max(n_notes, 1), "seconds": seconds,
            "drum_notes_left_out": seq.dropped_drums}


def stats_table(paths, sequences):
    """The table ``tokenize --stats`` prints: notes, tokens, tokens per note and seconds of each
    file, with a total row when there are several."""
    rows = [(str(p), token_stats(s)) for p, s in zip(paths, sequences)]
    width = max(len("file"), *(len(name) for name, _ in rows))
    lines = [f"{'file':<{width}}  {'notes':>7}  {'tokens':>7}  {'tok/note':>8}  {'seconds':>8}"]
    for name, st in rows:
        lines.append(f"{name:<{width}}  {st['notes']:>7}  {st['tokens']:>7}  {st['tokens_per_note']:>8.2f}  "
                     f"{st['seconds']:>8.1f}")
    if len(rows) > 1:
        notes, tokens = sum(st["notes"] for _, st in rows), sum(st["tokens"] for _, st in rows)
        lines.append(f"{'total':<{width}}  {notes:>7}  {tokens:>7}  {tokens / max(notes, 1):>8.2f}")
    return "\n".join(lines)


def encode_files(tokenizer, files, error):
    """The TokenSequence of each of ``files``, or the input error that stopped it (returned, not
    raised, so one bad file does not stop the others; an internal error is raised).  Many files
    show a progress bar on a terminal (after 2 s)."""
    from music_attn._progress import progress

    if not sys.stderr.isatty():
        return [_encode(tokenizer, path, error) for path in files]
    out = []
    with progress(len(files), "tokenize", unit="file", delay=2.0) as bar:
        for path in files:
            out.append(_encode(tokenizer, path, error))
            bar.update(1)
    return out


def _encode(tokenizer, path, error):
    try:
        check_input(path, what="MIDI file", error=error)
        return tokenizer.encode(path)
    except Exception as exc:                       # noqa: BLE001 -- sorted just below
        if input_error_message(exc) is None:
            raise                                  # an internal error: the caller reports it
        return exc


def token_document(path, seq, tokenizer, with_stats=False):
    """The JSON object of one sequence, as ``tokenize --json`` prints it."""
    doc = {
        "file": str(path),
        "tokenizer": tokenizer.to_dict(),
        "tokens": seq.tokens,
        "ids": seq.ids.tolist(),
        "note_of_token": seq.note_of_token.tolist(),
    }
    if with_stats:
        doc["stats"] = token_stats(seq)
    return doc


def read_token_file(path, item=None, bare_kind="remi"):
    """The tokenizer and ids of a token file; TokenizerError if unusable.

    The file holds what `tokenize --json` writes (one object, or a list of them
    from which ``item`` picks one, 1-based) or a bare list of ids or token strings
    (read with the ``bare_kind`` tokenizer).
    """

    doc = _load_json(path)
    if _is_bare(doc):
        doc = {"tokenizer": {"type": bare_kind}, ("tokens" if _all(doc, str) else "ids"): doc}
    else:
        doc = _pick(doc, item, path)
    tokens = doc.get("tokens", doc.get("ids"))
    if not isinstance(tokens, list):
        raise TokenizerError(f"{path}: expected 'tokens' or 'ids' (a list), as `tokenize --json` writes")
    try:
        tokenizer = Tokenizer.from_dict(doc.get("tokenizer", {"type": bare_kind}))
        if "tokens" in doc:
            return tokenizer, tokenizer.ids_from_tokens([str(t) for t in tokens])
        return tokenizer, _ids(tokens, tokenizer)
    except (TokenizerError, TypeError, ValueError, OverflowError) as exc:
        raise TokenizerError(f"{path}: {exc}") from None


def _load_json(path):

    data = read_input(path, limit=MAX_TOKEN_FILE, what="token file", error=TokenizerError)
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:            # bad UTF-8, bad JSON, a number of thousands of digits
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise TokenizerError(f"{path}: JSON nested too deeply") from None


def _all(values, kind):
    return all(isinstance(v, kind) and not isinstance(v, bool) for v in values)


def _is_bare(doc):
    return isinstance(doc, list) and (_all(doc, int) or _all(doc, str))


def _pick(doc, item, path):
    """The one sequence object of ``doc`` (``item``, 1-based, of a list)."""

    docs = doc if isinstance(doc, list) else [doc]
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise TokenizerError(f"{path}: expected the JSON of `tokenize --json` or a list of token ids")
    if item is None and len(docs) > 1:
        raise TokenizerError(f"{path}: holds {len(docs)} token sequences; pick one with --item 1..{len(docs)}")
    if item is not None and item > len(docs):
        raise TokenizerError(f"{path}: --item {item} is past its {len(docs)} sequence(s)")
    chosen = docs[(item or 1) - 1]
    if "error" in chosen and "tokens" not in chosen and "ids" not in chosen:
        raise TokenizerError(f"{path}: the sequence of {chosen.get('file')} holds no tokens "
                             f"({_short(chosen['error'])})")
    return chosen


def _short(value):
    return shorten(value, 200)


def _ids(values, tokenizer):
    """Integer ids, each checked against the vocabulary."""

    if not _all(values, int):
        raise TokenizerError("'ids' must be a list of integers")
    bad = next((v for v in values if not 0 <= v < tokenizer.vocab_size), None)
    if bad is not None:
        raise TokenizerError(f"token id {_short(bad)} outside the vocabulary (0..{tokenizer.vocab_size - 1})")
    return values
