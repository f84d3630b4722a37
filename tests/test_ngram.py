"""The Kneser-Ney baseline: a distribution for every history, and a value worked out by hand."""

import numpy as np
import pytest

from music_attn.training.ngram import KneserNeyLM


def test_bigram_probability_matches_hand_computation():
    # corpus 0 1 2 0 1 3, bigrams with the start padding: (-,0) (0,1) (1,2) (2,0) (0,1) (1,3)
    # bigram counts: (0,1) twice, four others once -> D2 = 4 / (4 + 2*1) = 2/3
    # continuation counts: 0 <- {-, 2} = 2; 1, 2, 3 <- one each; total 5, distinct 4
    #   -> D1 = 3 / (3 + 2*1) = 0.6, P1(1) = (1 - 0.6)/5 + 0.6 * 4/5 / 4 = 0.2
    # P(1 | 0) = (2 - 2/3)/2 + (2/3) * 1/2 * 0.2
    lm = KneserNeyLM(2, vocab_size=4).fit([[0, 1, 2, 0, 1, 3]])
    assert lm.prob([0], 1) == pytest.approx((2 - 2 / 3) / 2 + (2 / 3) * 0.5 * 0.2, rel=1e-12)
    assert lm.prob([], 0) == pytest.approx((1 - 2 / 3) / 1 + (2 / 3) * 1 * ((2 - 0.6) / 5 + 0.12), rel=1e-12)


@pytest.mark.parametrize("order", [2, 3, 5])
def test_every_history_gives_a_distribution_over_the_vocabulary(order):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 7, size=rng.integers(5, 40)) for _ in range(30)]
    lm = KneserNeyLM(order, vocab_size=9).fit(seqs)  # ids 7 and 8 never occur
    histories = [[], [1], list(seqs[0][:6]), [8, 8, 8, 8], [3, 1, 4, 1, 5, 9 % 9]]
    for h in histories:
        p = np.array([lm.prob(h, w) for w in range(9)])
        assert p.min() > 0
        assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_higher_order_fits_a_repetitive_corpus_better():
    tune = [0, 1, 2, 3, 2, 1, 0, 4, 5, 4, 3, 2] * 6
    lo = KneserNeyLM(2, vocab_size=6).fit([tune])
    hi = KneserNeyLM(4, vocab_size=6).fit([tune])
    assert hi.nll([tune])[0] < lo.nll([tune])[0]
    assert lo.nll([tune])[1] == len(tune) - 1
