"""The validation language of the config: value domains (``Range``, ``OneOf``, ``Text``, ...), relations
between keys, and ``key(...)``, the declaration of one config key with its default, domain and help."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and file) at fault."""


SHOWN_CHARS = 80  # the most of a value an error message quotes
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 3, 8, 8, 8
_SHORT.maxstring = _SHORT.maxother = SHOWN_CHARS


def shown(value: Any) -> str:
    """``repr(value)`` cut to about ``SHOWN_CHARS`` characters (nesting and lengths bounded before any
    string is built), so an error quoting a huge or deeply shared value stays one short line."""
    text = _SHORT.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


# ------------------------------------------------------------------------------------------- value domains
class Domain:
    """The values one key allows. ``allows`` decides, ``describe`` says it in words (errors,
    ``--help-config``),
    ``outside`` gives values of the key's type that it refuses (the generated tests feed them to the
    loader)."""

    def allows(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def outside(self) -> list[Any]:
        return []


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Range(Domain):
    """Numbers between ``lo`` and ``hi`` (either may be None: unbounded), each end open or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def allows(self, value: Any) -> bool:
        if not _num(value) or not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        return f"{'<' if self.hi_open else '<='} {self.hi}"

    def inside(self) -> float:
        """One value it allows."""
        return next(
            v for v in (self.lo, self.hi, 0, 1, (self.lo or 0) + 1, (self.hi or 0) - 1) if self.allows(v)
        )

    def outside(self) -> list[Any]:
        step = 1 if all(isinstance(b, int) for b in (self.lo, self.hi) if b is not None) else 0.5
        out = []
        if self.lo is not None:
            out.append(self.lo if self.lo_open else self.lo - step)
        if self.hi is not None:
            out.append(self.hi if self.hi_open else self.hi + step)
        return out


def at_least(lo: float) -> Range:
    return Range(lo=lo)


def above(lo: float) -> Range:
    return Range(lo=lo, lo_open=True)


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Range:
    return Range(lo, hi, lo_open, hi_open)


def probability() -> Range:
    return Range(0, 1)


@dataclass(frozen=True)
class OneOf(Domain):
    """One of a fixed set of choices (``auto`` is one of them where the key has it)."""

    choices: tuple

    def allows(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        names = [str(c) for c in self.choices]
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"

    def outside(self) -> list[Any]:
        return [f"not_{self.choices[0]}"]


def one_of(*choices: Any) -> OneOf:
    return OneOf(tuple(choices))


@dataclass(frozen=True)
class AutoOr(Domain):
    """``auto`` (resolved where the key is used) or a whole number in ``numbers``."""

    numbers: Range

    def allows(self, value: Any) -> bool:
        return value == "auto" or (isinstance(value, int) and self.numbers.allows(value))

    def describe(self) -> str:
        return f"auto or an integer {self.numbers.describe()}"

    def outside(self) -> list[Any]:
        return ["not_auto", *self.numbers.outside()]


def auto_or(numbers: Range) -> AutoOr:
    return AutoOr(numbers)


@dataclass(frozen=True)
class Text(Domain):
    """Any string (a path, a name), or any non-empty one."""

    nonempty: bool = False

    def allows(self, value: Any) -> bool:
        return isinstance(value, str) and (bool(value) or not self.nonempty)

    def describe(self) -> str:
        return "a non-empty string" if self.nonempty else "any string"

    def outside(self) -> list[Any]:
        return [""] if self.nonempty else []


def text(nonempty: bool = False) -> Text:
    return Text(nonempty)


@dataclass(frozen=True)
class Flag(Domain):
    """true or false (the type check already refuses anything else)."""

    def allows(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


def flag() -> Flag:
    return Flag()


@dataclass(frozen=True)
class Numbers(Domain):
    """A list of exactly ``length`` numbers, each in ``item``."""

    length: int
    item: Range

    def allows(self, value: Any) -> bool:
        return (
            isinstance(value, (list, tuple))
            and len(value) == self.length
            and all(map(self.item.allows, value))
        )

    def describe(self) -> str:
        return f"{self.length} numbers, each {self.item.describe()}"

    def outside(self) -> list[Any]:
        return [
            [self.item.inside()] * (self.length - 1),
            *([bad] * self.length for bad in self.item.outside()),
        ]


def numbers(length: int, item: Range) -> Numbers:
    return Numbers(length, item)


@dataclass(frozen=True)
class Matches(Domain):
    """Strings a predicate accepts (a small format such as ``A:B``); ``examples_outside`` feeds the tests."""

    predicate: Callable[[str], bool]
    description: str
    examples_outside: tuple = ()

    def allows(self, value: Any) -> bool:
        return isinstance(value, str) and self.predicate(value)

    def describe(self) -> str:
        return self.description

    def outside(self) -> list[Any]:
        return list(self.examples_outside)


@dataclass(frozen=True)
class Relation:
    """A rule between keys (``keys``, dotted), checked on the whole config after every key's own domain.

    ``holds(cfg)`` decides; ``rule`` says it in words; ``breach`` is a set of dotted values that break it,
    for the generated tests (every relation must come with one)."""

    keys: tuple[str, ...]
    rule: str
    holds: Callable[[Any], bool]
    breach: dict[str, Any]


def key(default: Any, domain: Domain, help: str = "") -> Any:
    """A config field with its allowed values and a one-line help (both shown by ``--help-config``)."""
    meta = {"domain": domain, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)
