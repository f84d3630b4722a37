"""``music-attn tokenize FILE...`` and ``music-attn decode TOKENS.json -o out.mid``.

``tokenize --json`` prints one JSON object per file (a list of them for several
files; a file that cannot be read is an object with its ``error``) holding the
tokenizer config, the token strings, ids and note alignment.  A bad file does
not stop the others: each gets its ``error:`` line and the exit code is 2.
``decode`` reads that JSON back (the token strings win over the ids, so a
hand-edited file works; ``--item N`` picks one of several), or a bare list of
ids or token strings, and writes the MIDI atomically, at the tempo the tokens
carry (or ``--bpm``), saying what it had to assume.  ``--tempo``/``--programs``
add Tempo and Program tokens; drum notes are left out (and counted) unless
``--drums``.
"""

import argparse
import json
import math
import sys
from pathlib import Path

from music_attn.cli._options import add_force, integer, note_dropped_drums

__all__ = ["register"]

_TOKENIZERS = ("remi", "performance")


def register(sub):
    p = sub.add_parser("tokenize", help="print the tokens of MIDI files (or JSON, or statistics)")
    p.add_argument("files", nargs="+", metavar="FILE", help="MIDI files")
    p.add_argument("--tokenizer", choices=_TOKENIZERS, default="remi", help="token vocabulary")
    p.add_argument("--tempo", action="store_true", help="add Tempo tokens where the tempo changes")
    p.add_argument("--programs", action="store_true", help="add a Program token before each note")
    p.add_argument("--drums", action="store_true", help="keep drum notes (channel 10; left out by default)")
    p.add_argument("--json", action="store_true", help="print JSON that `decode` reads back")
    p.add_argument("--stats", action="store_true", help="print notes, tokens and tokens per note")
    p.add_argument("--out", metavar="DATASET", help="tokenize the folder FILE into a token dataset "
                   "(uint16 token file + index) that `train DATASET` reads memory-mapped")
    p.add_argument("--jobs", type=integer(1, 1024), default=1, help="worker processes for --out")
    p.set_defaults(func=_tokenize)

    p = sub.add_parser("decode", help="turn tokens (the JSON of `tokenize --json`) back into MIDI")
    p.add_argument("tokens", metavar="TOKENS.json",
                   help="JSON written by `tokenize --json`, or a list of ids or token strings")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mid", help="MIDI file to write")
    p.add_argument("--item", type=integer(1), metavar="N",
                   help="which sequence of a file holding several (1 = the first; default: the only one)")
    p.add_argument("--tokenizer", choices=_TOKENIZERS, default="remi",
                   help="vocabulary of a bare list of ids or tokens (a file from `tokenize --json` names its own)")
    p.add_argument("--bpm", type=_bpm, help="tempo when the tokens carry none (default: 120)")
    add_force(p)
    p.set_defaults(func=_decode)


def _bpm(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bpm must be a number, got {text!r}") from None
    if not math.isfinite(value) or not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"--bpm must be between 1 and 1000, got {text}")
    return value


def _tokenize(args):
    from music_attn.errors import MidiError, input_error_message
    from music_attn.music.tokenizers import Tokenizer
    from music_attn.music.tokenizers.token_file import encode_files, stats_table, token_document

    tokenizer = Tokenizer.from_dict({"type": args.tokenizer, "tempo": args.tempo, "programs": args.programs,
                                     "include_drums": args.drums})
    if args.out:
        from music_attn.training.dataset import write_folder_dataset
        print(write_folder_dataset(args.files, args.out, tokenizer, jobs=args.jobs))
        return 0
    results = encode_files(tokenizer, args.files, MidiError)
    good = [(path, seq) for path, seq in zip(args.files, results) if not isinstance(seq, Exception)]
    if args.json:
        docs = [token_document(path, seq, tokenizer, args.stats) if not isinstance(seq, Exception)
                else {"file": str(path), "error": input_error_message(seq)} for path, seq in zip(args.files, results)]
        json.dump(docs[0] if len(docs) == 1 else docs, sys.stdout)
        sys.stdout.write("\n")
    elif args.stats and good:
        print(stats_table(*zip(*good)))
    else:
        for path, seq in good:
            print(f"# {path}: {len(seq.notes)} notes, {len(seq)} tokens")
            print(" ".join(seq.tokens))
    sys.stdout.flush()
    for path, seq in good:
        note_dropped_drums(path, seq.dropped_drums)
    return _report_failures(results)


def _report_failures(results):
    """One ``error:`` line per file that could not be read; exit code 2 if any."""
    from music_attn.errors import input_error_message
    failures = [exc for exc in results if isinstance(exc, Exception)]
    sys.stdout.flush()
    for exc in failures:
        sys.stderr.write(f"error: {input_error_message(exc)}\n")
    return 2 if failures else 0


def _decode(args):
    from music_attn._io import atomic_outputs, check_output
    from music_attn.music.midi import write_midi
    from music_attn.music.tokenizers.token_file import read_token_file

    path = Path(args.tokens)
    check_output(args.output, inputs=[path], force=args.force)
    tokenizer, ids = read_token_file(path, args.item, args.tokenizer)
    result = tokenizer.decode(ids, bpm=args.bpm)
    with atomic_outputs([args.output], inputs=[path], force=args.force) as (tmp,):
        write_midi(tmp, result.score)
    assumed = f"; assumed {', '.join(result.assumed)}" if result.assumed else ""
    print(f"wrote {args.output}: {len(result.score)} notes, {len(ids)} tokens, {result.skipped} skipped{assumed}")
    return 0


