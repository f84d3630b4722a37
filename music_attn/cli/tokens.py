"""``music-attn tokenize FILE...`` and ``music-attn decode TOKENS.json -o out.mid``.

``tokenize --json`` prints one JSON object per file (a list for several files)
holding the tokenizer config, the token strings, ids and note alignment;
``decode`` reads that JSON back (the token strings win over the ids, so a
hand-edited file works; a bare list of ids is read with ``--tokenizer``) and
writes the MIDI atomically.  A file that cannot be read is reported (one
``error:`` line) after the others are printed, and the exit code is 2.
"""

import argparse
import json
import math
import sys
from pathlib import Path

__all__ = ["register"]

_TOKENIZERS = ("remi", "performance")
_MAX_JSON_BYTES = 256 * 2**20  # a million-token file is ~10 MB of JSON


def register(sub):
    p = sub.add_parser("tokenize", help="print the tokens of MIDI files (or JSON, or statistics)")
    p.add_argument("files", nargs="+", metavar="FILE", help="MIDI files")
    _tokenizer_options(p)
    p.add_argument("--json", action="store_true", help="print JSON that `decode` reads back")
    p.add_argument("--stats", action="store_true", help="print notes, tokens and tokens per note")
    p.add_argument("--out", metavar="DATASET", help="tokenize the folder FILE into a token dataset "
                   "(uint16 token file + index) that `train DATASET` reads memory-mapped")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for --out (default 1)")
    p.set_defaults(func=_tokenize)

    p = sub.add_parser("decode", help="turn tokens (the JSON of `tokenize --json`) back into MIDI")
    p.add_argument("tokens", metavar="TOKENS.json",
                   help="JSON written by `tokenize --json` (or a bare list of ids, read with --tokenizer)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mid", help="MIDI file to write")
    p.add_argument("--tokenizer", choices=_TOKENIZERS, default="remi",
                   help="vocabulary of a bare list of ids (default: remi)")
    p.add_argument("--bpm", type=_bpm, help="tempo when the tokens carry none (default 120)")
    p.set_defaults(func=_decode)


def _tokenizer_options(p):
    p.add_argument("--tokenizer", choices=_TOKENIZERS, default="remi", help="token vocabulary (default: remi)")
    p.add_argument("--tempo", action="store_true", help="add Tempo tokens where the tempo changes")
    p.add_argument("--programs", action="store_true", help="add a Program token before each note")
    p.add_argument("--drums", action="store_true", help="keep drum notes (channel 10; left out by default)")


def _bpm(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bpm must be a number, got {text!r}") from None
    if not math.isfinite(value) or not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"--bpm must be between 1 and 1000, got {text}")
    return value


def _tokenize(args):
    from music_attn.errors import MidiError
    from music_attn.music.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dict({"type": args.tokenizer, "tempo": args.tempo, "programs": args.programs,
                                     "include_drums": args.drums})
    if args.out:
        return _write_dataset(args, tokenizer)
    read, errors = [], []
    for path in args.files:  # all read before any output
        try:
            read.append((path, tokenizer.encode(path)))
        except MidiError as exc:
            errors.append(str(exc))
    if read:
        _print(args, tokenizer, read)
    for path, seq in read:
        if seq.dropped_drums:
            sys.stderr.write(f"note: {path}: {seq.dropped_drums} drum notes left out (--drums keeps them)\n")
    for message in errors:
        sys.stderr.write(f"error: {' '.join(message.split())}\n")
    return 2 if errors else 0


def _print(args, tokenizer, read):
    if args.json:
        docs = [_document(path, seq, tokenizer, args.stats) for path, seq in read]
        json.dump(docs[0] if len(docs) == 1 else docs, sys.stdout)
        sys.stdout.write("\n")
    elif args.stats:
        _print_stats(read)
    else:
        for path, seq in read:
            print(f"# {path}: {len(seq.notes)} notes, {len(seq)} tokens")
            print(" ".join(seq.tokens))


def _write_dataset(args, tokenizer):
    from music_attn.training.dataset import write_dataset

    if len(args.files) != 1 or not Path(args.files[0]).is_dir():
        raise ValueError("--out takes one folder of MIDI files: tokenize DIR --out DATASET")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    failures = []
    ds = write_dataset(args.files[0], args.out, tokenizer, jobs=args.jobs, failures=failures)
    counts = {s: sum(f["split"] == s for f in ds.files) for s in ("train", "validation")}
    print(f"wrote {args.out}: {len(ds)} files ({counts['train']} train, {counts['validation']} "
          f"validation), {ds.tokens.size:,} tokens, {len(failures)} unreadable files skipped")
    return 0


def _stats(seq):
    n_notes, n_tokens = len(seq.notes), len(seq)
    seconds = float(seq.notes["end"].max()) if n_notes else 0.0
    return {"notes": n_notes, "tokens": n_tokens, "tokens_per_note": n_tokens / max(n_notes, 1),
            "seconds": seconds, "drum_notes_left_out": seq.dropped_drums}


def _document(path, seq, tokenizer, with_stats):
    doc = {
        "file": str(path),
        "tokenizer": tokenizer.to_dict(),
        "tokens": seq.tokens,
        "ids": seq.ids.tolist(),
        "note_of_token": seq.note_of_token.tolist(),
    }
    if with_stats:
        doc["stats"] = _stats(seq)
    return doc


def _print_stats(read):
    rows = [(str(p), _stats(s)) for p, s in read]
    width = max(len("file"), *(len(name) for name, _ in rows))
    print(f"{'file':<{width}}  {'notes':>7}  {'tokens':>7}  {'tok/note':>8}  {'seconds':>8}")
    for name, st in rows:
        print(f"{name:<{width}}  {st['notes']:>7}  {st['tokens']:>7}  {st['tokens_per_note']:>8.2f}  {st['seconds']:>8.1f}")
    if len(rows) > 1:
        notes, tokens = sum(st["notes"] for _, st in rows), sum(st["tokens"] for _, st in rows)
        print(f"{'total':<{width}}  {notes:>7}  {tokens:>7}  {tokens / max(notes, 1):>8.2f}")


def _decode(args):
    tokenizer, ids = _read_tokens(args.tokens, args.tokenizer)
    result = tokenizer.decode(ids, bpm=args.bpm)
    result.score.write(args.output)
    assumed = f"; assumed {', '.join(result.assumed)}" if result.assumed else ""
    print(f"wrote {args.output}: {len(result.score)} notes, {len(ids)} tokens, {result.skipped} skipped{assumed}")
    return 0


def _read_tokens(path, default_type):
    """The tokenizer and ids of a `tokenize --json` file (or a bare id list); TokenizerError if unusable."""
    from music_attn.errors import TokenizerError
    from music_attn.music.midi import read_file_bytes
    from music_attn.music.tokenizer import Tokenizer

    data = read_file_bytes(path, limit=_MAX_JSON_BYTES, what="a token JSON file", error=TokenizerError)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise TokenizerError(f"{path}: JSON nested too deeply to hold tokens") from None
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], dict):
        doc = doc[0]
    if isinstance(doc, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in doc):
        doc = {"ids": doc, "tokenizer": {"type": default_type}}
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens", doc.get("ids")), list):
        raise TokenizerError(f"{path}: expected one object with 'tokens' (as `tokenize --json` writes for one file)"
                             " or a list of ids")
    try:
        tokenizer = Tokenizer.from_dict(doc.get("tokenizer", {"type": default_type}))
        if "tokens" in doc:
            return tokenizer, tokenizer.ids_from_tokens([str(t) for t in doc["tokens"]])
        return tokenizer, _ids(doc["ids"])
    except TokenizerError as exc:
        raise TokenizerError(f"{path}: {exc}") from None


def _ids(values):
    """Whole numbers (not bools) -> list of ints; TokenizerError names the first bad one."""
    from music_attn.errors import TokenizerError

    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TokenizerError(f"token ids must be whole numbers, got {value!r}")
    return list(values)
