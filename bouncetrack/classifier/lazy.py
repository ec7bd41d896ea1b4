"""Regular expressions compiled on first use.

The bounce pipe is a new process per bounce: compiling every pattern of the classifier at
import costs more than classifying one message. ``LazyRe`` keeps the pattern text and
compiles it the first time a method is called, so a process pays only for what it uses.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs import time; only the type checker needs it
    from collections.abc import Callable, Iterator
    from typing import Any


class LazyRe:
    """A stand-in for ``re.Pattern[str]`` that compiles on first use."""

    __slots__ = ("pattern", "flags", "_rx")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern = pattern
        self.flags = flags
        self._rx: re.Pattern[str] | None = None

    def compiled(self) -> re.Pattern[str]:
        rx = self._rx
        if rx is None:
            rx = self._rx = re.compile(self.pattern, self.flags)
        return rx

    def search(self, string: str, pos: int = 0, endpos: int = 2**62) -> re.Match[str] | None:
        return self.compiled().search(string, pos, endpos)

    def match(self, string: str, pos: int = 0, endpos: int = 2**62) -> re.Match[str] | None:
        return self.compiled().match(string, pos, endpos)

    def fullmatch(self, string: str) -> re.Match[str] | None:
        return self.compiled().fullmatch(string)

    def finditer(self, string: str) -> Iterator[re.Match[str]]:
        return self.compiled().finditer(string)

    def findall(self, string: str) -> list[Any]:
        return self.compiled().findall(string)

    def sub(self, repl: str | Callable[[re.Match[str]], str], string: str, count: int = 0) -> str:
        return self.compiled().sub(repl, string, count)


def lazy_re(pattern: str, flags: int = 0) -> LazyRe:
    return LazyRe(pattern, flags)
