"""Interpolated Kneser-Ney n-gram language model: the baseline the transformer is measured against.

Smoothing: interpolated Kneser-Ney (Chen & Goodman 1998, section 3.4) with one
absolute discount per order, ``D = n1 / (n1 + 2 n2)`` (``n1``, ``n2``: how many
n-grams of that order occur exactly once, twice).  The highest order uses raw
counts; every lower order uses continuation counts (how many distinct tokens
precede the n-gram), and the unigram level is interpolated with the uniform
distribution over the vocabulary, so no token ever gets probability zero.

For every context the distribution sums to one over the vocabulary; the tests
check that property and a value computed by hand.

Sequences are scored the way the transformer is: the first token (BOS) is the
given start and every later token is predicted from the ones before it, with
the missing history at the start filled with a padding symbol that is not in
the vocabulary.
"""

from collections import Counter, defaultdict

import numpy as np

__all__ = ["KneserNeyLM"]

_PAD = -1  # history before the start of a sequence


class KneserNeyLM:
    """An order-``order`` interpolated Kneser-Ney model over ids ``0 .. vocab_size - 1``.

    Parameters
    ----------
    order : int
        n of the n-gram (2 or more).
    vocab_size : int
        Size of the vocabulary, for the uniform floor at the unigram level.
    """

    def __init__(self, order, vocab_size):
        if order < 2:
            raise ValueError(f"order must be >= 2, got {order}")
        self.order = int(order)
        self.vocab_size = int(vocab_size)
        self._counts = None

    def fit(self, sequences):
        """Count n-grams of every order in ``sequences`` (iterables of ids). Returns self."""
        n = self.order
        top = Counter()
        for seq in sequences:
            padded = [_PAD] * (n - 1) + [int(t) for t in seq]
            for i in range(n - 1, len(padded)):
                top[tuple(padded[i - n + 1 : i + 1])] += 1
        # counts[k] maps a k-gram (history of k-1, then the token) to its count:
        # raw counts for k = n, continuation counts (distinct left neighbours) below.
        counts = {n: top}
        for k in range(n - 1, 0, -1):
            counts[k] = Counter(gram[1:] for gram in counts[k + 1])
        self._counts = counts
        self._tables = {k: _level_tables(c) for k, c in counts.items()}
        self._discount = {k: _discount(c) for k, c in counts.items()}
        return self

    def prob(self, history, token):
        """P(token | history) (history: the ids before it, any length)."""
        if self._counts is None:
            raise RuntimeError("fit the model before asking for probabilities")
        n = self.order
        history = ([_PAD] * (n - 1) + [int(t) for t in history])[-(n - 1) :]
        return self._prob(tuple(history), int(token), n)

    def _prob(self, history, token, k):
        # history: the k-1 ids before the token at level k.
        if k == 1:
            return self._unigram(token)
        lower = self._prob(history[1:], token, k - 1)
        total, distinct = self._tables[k].get(history, (0, 0))
        if total == 0:
            return lower
        d = self._discount[k]
        count = self._counts[k].get(history + (token,), 0)
        return max(count - d, 0.0) / total + d * distinct / total * lower

    def _unigram(self, token):
        total, distinct = self._tables[1][()]
        d = self._discount[1]
        count = self._counts[1].get((token,), 0)
        return max(count - d, 0.0) / total + d * distinct / total / self.vocab_size

    def nll(self, sequences):
        """Mean negative log-likelihood (nats per predicted token) over ``sequences``.

        Every token after the first of each sequence is predicted.
        Returns ``(mean_nll, n_tokens)``.
        """
        total, count = 0.0, 0
        for seq in sequences:
            seq = [int(t) for t in seq]
            for i in range(1, len(seq)):
                total -= np.log(self.prob(seq[:i], seq[i]))
                count += 1
        return total / max(count, 1), count


def _level_tables(counts):
    """history -> (sum of counts after it, number of distinct tokens after it)."""
    table = defaultdict(lambda: [0, 0])
    for gram, c in counts.items():
        entry = table[gram[:-1]]
        entry[0] += c
        entry[1] += 1
    return {h: tuple(v) for h, v in table.items()}


def _discount(counts):
    """Chen & Goodman's absolute discount D = n1 / (n1 + 2 n2), kept inside (0, 1)."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)
