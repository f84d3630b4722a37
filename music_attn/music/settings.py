"""Checks for tokenizer settings: type, finite, within a sane range.

Every tokenizer setting passes through one of these before it is used, so a
config from a file (token JSON, a checkpoint) can never ask for gigabytes or
infinite loops: a bad value raises :class:`~music_attn.errors.TokenizerError`
naming the setting.
"""

import math
import numbers

import numpy as np

from music_attn.errors import TokenizerError, brief

__all__ = ["check_bool", "check_int", "check_float", "check_pitch_range", "check_int_pair", "check_metres"]


def check_bool(name, value):
    """``value`` if it is a bool (JSON true/false)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TokenizerError(f"{name} must be true or false, got {brief(value)}")
    return bool(value)


def _number(value):
    """True for a finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _within(name, value, low, high):
    if not low <= value <= high:
        raise TokenizerError(f"{name} must be in {low}..{high}, got {value}")
    return value


def check_int(name, value, low, high):
    """``value`` as int if it is a whole number in ``low..high``."""
    if not _number(value) or int(value) != value:
        raise TokenizerError(f"{name} must be a whole number, got {brief(value)}")
    return _within(name, int(value), low, high)


def check_float(name, value, low, high):
    """``value`` as float if it is a finite number in ``[low, high]``."""
    if not _number(value):
        raise TokenizerError(f"{name} must be a finite number, got {brief(value)}")
    return _within(name, float(value), low, high)


def check_int_pair(name, value, low, high):
    """``(a, b)`` with ``low <= a <= b <= high``, from a list or tuple of two whole numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TokenizerError(f"{name} must be a pair [low, high], got {brief(value)}")
    a, b = (check_int(name, v, low, high) for v in value)
    if a > b:
        raise TokenizerError(f"{name} must have low <= high, got {brief(value)}")
    return a, b


def check_pitch_range(value):
    """A MIDI pitch range ``(low, high)`` within 0..127."""
    return check_int_pair("pitch_range", value, 0, 127)


def check_metres(value, max_count=256, max_numerator=64):
    """A non-empty list of distinct (numerator, denominator) metres, denominators powers of two <= 64."""
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= max_count:
        raise TokenizerError(f"time_signatures must be a list of 1..{max_count} [numerator, denominator] pairs")
    metres = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise TokenizerError(f"time_signatures: each metre is [numerator, denominator], got {item!r}")
        num = check_int("time_signatures numerator", item[0], 1, max_numerator)
        den = check_int("time_signatures denominator", item[1], 1, 64)
        if den & (den - 1):
            raise TokenizerError(f"time_signatures denominator must be a power of two, got {den}")
        metres.append((num, den))
    if len(set(metres)) != len(metres):
        raise TokenizerError("time_signatures must not repeat a metre")
    return metres
