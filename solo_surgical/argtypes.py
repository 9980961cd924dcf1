"""argparse value types that refuse out-of-range numbers with a message naming the option.

``p.add_argument("--image-size", type=image_size)``: argparse reports a ``ValueError`` /
``ArgumentTypeError`` raised here as ``argument --image-size: MESSAGE`` (one line, exit status 2,
see ``solo_surgical.cli.OneLineParser``), before the command does any work.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Mapping

# Sizes above this are refused before anything is allocated: a 4096 x 4096 RGB float batch of 64
# is already 12 GiB; larger values are typing mistakes (``--size 100000``), not experiments.
MAX_IMAGE_SIZE = 4096
MIN_IMAGE_SIZE = 16  # smaller crops leave a ResNet's last stage with nothing to convolve
MAX_BATCH = 65536
MAX_WORKERS = 256


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in ``[lo, hi]``."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"{value} must be {'>= ' + str(lo) if hi is None else f'between {lo} and {hi}'}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(lo: float, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """A finite number in the interval ``lo .. hi`` (``lo_open``/``hi_open``: bound excluded)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        low_bad = value <= lo if lo_open else value < lo
        high_bad = hi is not None and (value >= hi if hi_open else value > hi)
        if low_bad or high_bad:
            left = f"{'>' if lo_open else '>='} {lo:g}"
            right = "" if hi is None else f" and {'<' if hi_open else '<='} {hi:g}"
            raise argparse.ArgumentTypeError(f"{value:g} must be {left}{right}")
        return value

    parse.__name__ = "number"
    return parse


image_size = int_range(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
batch_size = int_range(1, MAX_BATCH)
workers = int_range(0, MAX_WORKERS)
threads = int_range(1, 1024)
positive_int = int_range(1)
non_negative_int = int_range(0)
positive_float = float_range(0.0, lo_open=True)
non_negative_float = float_range(0.0)
probability = float_range(0.0, 1.0, hi_open=True)  # e.g. dropout: 1.0 would drop everything


def check_fields(config: object, rules: Mapping[str, Callable[[str], object]], command: str) -> None:
    """Apply a command's option rules (the same functions argparse uses as ``type=``) to the fields of
    its config dataclass, so a Python caller meets exactly the command line's checks.

    Raises:
        UserError: ``"<command>: <field>=<value>: <rule>"`` for the first field that breaks its rule
            (a bool where a number is expected, or an int field given 3.0, is refused too).
    """
    from .errors import UserError

    for name, parse in rules.items():
        value = getattr(config, name)
        if value is None:
            continue
        try:
            if isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"{value!r} is not a number")
            parse(str(value))
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise UserError(f"{command}: {name}={value!r}: {exc}") from None
