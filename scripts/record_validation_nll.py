"""Record a model's validation NLL per token in its checkpoint (the ``metrics`` entry).

``inspect`` compares a piece's NLL per token with this number to say how well
the piece fits the model.  The NLL is `music_attn.training.evaluate.model_nll`
on the validation split of ``data/`` (the numbers of ``music-attn bench model``);
the parameters are rewritten unchanged.

Run from the repository root:

    PYTHONPATH=. python scripts/record_validation_nll.py                  # the shipped model
    PYTHONPATH=. python scripts/record_validation_nll.py build/other.npz  # any checkpoint
"""

import argparse
import sys

import numpy as np

from music_attn.runtime.checkpoint import load_checkpoint, save_checkpoint, shipped_model_path
from music_attn.training.data import load_corpus
from music_attn.training.evaluate import find_data_dir, model_nll


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=str(shipped_model_path()))
    args = parser.parse_args(argv)
    data_dir = find_data_dir()
    if data_dir is None:
        sys.exit("error: no data/MANIFEST.csv here: run from the repository root")
    model, state = load_checkpoint(args.checkpoint)
    validation = load_corpus(data_dir, model.tokenizer, "validation", progress=False)
    nll, tokens = model_nll(model, validation)
    metrics = {**model.metrics, "validation_nats_per_token": round(float(nll), 6),
               "validation_tokens": int(tokens), "validation_sequences": len(validation)}
    save_checkpoint(args.checkpoint, model, train_state=state, metrics=metrics)
    check = load_checkpoint(args.checkpoint).model
    assert all(np.array_equal(check.params[k], v) for k, v in model.params.items())
    print(f"{args.checkpoint}: validation NLL {nll:.4f} nats/token over {tokens:,} tokens "
          f"of {len(validation)} sequences, recorded")


if __name__ == "__main__":
    main()
