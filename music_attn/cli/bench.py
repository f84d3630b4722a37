"""``music-attn bench WHAT``: performance tables, as ratios against references run alongside."""

import importlib

_TARGETS = {
    "attention": "causal attention: ours vs naive numpy vs torch SDPA; blocked peak memory",
    "tokenize": "files/s and notes/s: our tokenizers vs mido, pretty_midi, MidiTok",
    "model": "generation and training throughput vs torch eager; model evaluation",
    "inspect": "whole pieces of growing length: seconds, peak memory, page and JSON sizes",
}


def register(sub):
    p = sub.add_parser("bench", help="run a benchmark and print its table")
    p.add_argument("what", choices=sorted(_TARGETS), help="; ".join(f"{k}: {v}" for k, v in _TARGETS.items()))
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.set_defaults(func=_run)


def _run(args):
    module = importlib.import_module(f"music_attn.bench.{args.what}")
    module.run(quick=args.quick)
    return 0
