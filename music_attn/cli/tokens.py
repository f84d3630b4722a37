"""``music-attn tokenize FILE...`` and ``music-attn decode TOKENS.json -o out.mid``.

``tokenize --json`` prints one JSON object per file (a list for several files)
holding the tokenizer config, the token strings, ids and note alignment;
``decode`` reads that JSON back (the token strings win over the ids, so a
hand-edited file works) and writes the MIDI atomically.
"""

import json
import sys
from pathlib import Path

__all__ = ["register"]

_TOKENIZERS = ("remi", "performance")


def register(sub):
    p = sub.add_parser("tokenize", help="print the tokens of MIDI files (or JSON, or statistics)")
    p.add_argument("files", nargs="+", metavar="FILE", help="MIDI files")
    p.add_argument("--tokenizer", choices=_TOKENIZERS, default="remi", help="token vocabulary (default: remi)")
    p.add_argument("--json", action="store_true", help="print JSON that `decode` reads back")
    p.add_argument("--stats", action="store_true", help="print notes, tokens and tokens per note")
    p.add_argument("--out", metavar="DATASET", help="tokenize the folder FILE into a token dataset "
                   "(uint16 token file + index) that `train DATASET` reads memory-mapped")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for --out (default 1)")
    p.set_defaults(func=_tokenize)

    p = sub.add_parser("decode", help="turn tokens (the JSON of `tokenize --json`) back into MIDI")
    p.add_argument("tokens", metavar="TOKENS.json", help="JSON written by `tokenize --json`")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mid", help="MIDI file to write")
    p.set_defaults(func=_decode)


def _tokenize(args):
    from music_attn.music.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dict({"type": args.tokenizer})
    if args.out:
        return _write_dataset(args, tokenizer)
    sequences = [tokenizer.encode(path) for path in args.files]  # all read before any output
    if args.json:
        docs = [_document(path, seq, tokenizer, args.stats) for path, seq in zip(args.files, sequences)]
        json.dump(docs[0] if len(docs) == 1 else docs, sys.stdout)
        sys.stdout.write("\n")
    elif args.stats:
        _print_stats(args.files, sequences)
    else:
        for path, seq in zip(args.files, sequences):
            print(f"# {path}: {len(seq.notes)} notes, {len(seq)} tokens")
            print(" ".join(seq.tokens))
    return 0


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
    return {"notes": n_notes, "tokens": n_tokens, "tokens_per_note": n_tokens / max(n_notes, 1), "seconds": seconds}


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


def _print_stats(paths, sequences):
    rows = [(str(p), _stats(s)) for p, s in zip(paths, sequences)]
    width = max(len("file"), *(len(name) for name, _ in rows))
    print(f"{'file':<{width}}  {'notes':>7}  {'tokens':>7}  {'tok/note':>8}  {'seconds':>8}")
    for name, st in rows:
        print(f"{name:<{width}}  {st['notes']:>7}  {st['tokens']:>7}  {st['tokens_per_note']:>8.2f}  {st['seconds']:>8.1f}")
    if len(rows) > 1:
        notes, tokens = sum(st["notes"] for _, st in rows), sum(st["tokens"] for _, st in rows)
        print(f"{'total':<{width}}  {notes:>7}  {tokens:>7}  {tokens / max(notes, 1):>8.2f}")


def _decode(args):
    from music_attn.music.midi import write_midi

    tokenizer, ids = _read_tokens(Path(args.tokens))
    result = tokenizer.decode(ids)
    write_midi(args.output, result.midi)
    n_notes = sum(len(inst.notes) for inst in result.midi.instruments)
    print(f"wrote {args.output}: {n_notes} notes, {len(ids)} tokens, {result.skipped} skipped")
    return 0


def _read_tokens(path):
    """The tokenizer and ids of a `tokenize --json` file; TokenizerError if unusable."""
    from music_attn.errors import TokenizerError
    from music_attn.music.tokenizer import Tokenizer

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens", doc.get("ids")), list):
        raise TokenizerError(f"{path}: expected one object with 'tokens' (as `tokenize --json` writes for one file)")
    try:
        tokenizer = Tokenizer.from_dict(doc.get("tokenizer", {"type": "remi"}))
        if "tokens" in doc:
            return tokenizer, tokenizer.ids_from_tokens([str(t) for t in doc["tokens"]])
        return tokenizer, [int(i) for i in doc["ids"]]
    except (TokenizerError, TypeError, ValueError) as exc:
        raise TokenizerError(f"{path}: {exc}") from None
