"""MIME boundaries without a regular expression compiled per message (issue 21).

For every multipart it parses, ``email.feedparser`` compiles a regular expression made of
that part's boundary (Python 3.11, ``FeedParser._parsegen``)::

    re.compile('(?P<sep>' + re.escape(separator) +
               r')(?P<end>--)?(?P<ws>[ \\t]*)(?P<linesep>\\r\\n|\\r|\\n)?$')

Boundaries are unique per message (RFC 2046 §5.1.1), so ``re``'s cache never holds it: about
80 µs of CPU per multipart report (the parse of a warm bounce costs a few times that), and
each one pushes another pattern out of that cache. The parser uses the pattern only through
``.match(line)`` and the named groups of the match: :class:`BoundaryPattern` answers the
same from ``str.startswith`` and one tail pattern compiled once.

:func:`install` (done by :mod:`.view`, the one parser of the classifier) gives
``email.feedparser`` a view of ``re`` whose ``compile`` returns a :class:`BoundaryPattern`
for exactly that shape (the separator read back from the pattern and checked by escaping it
again) and leaves everything else to ``re``: another pattern, or a later parser that builds
it differently, is compiled as before.
"""

from __future__ import annotations

import email.feedparser
import re
from typing import Any

_HEAD = "(?P<sep>"
_TAIL = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
_TAIL_RE = re.compile(_TAIL[1:])  # what follows the separator, matched where it ends
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


class BoundaryPattern:
    """``re.compile(_HEAD + re.escape(separator) + _TAIL)`` as the parser uses it: ``match``
    gives a match with the groups ``end``, ``ws`` and ``linesep`` exactly when that pattern
    matches (its ``sep`` group, the separator, is not kept)."""

    __slots__ = ("separator", "pattern")

    def __init__(self, separator: str, pattern: str) -> None:
        self.separator = separator
        self.pattern = pattern

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self.separator):
            return None
        return _TAIL_RE.match(line, len(self.separator))


def compile_boundary(pattern: str) -> BoundaryPattern | None:
    """The :class:`BoundaryPattern` of a pattern of the parser's shape, else None."""
    if not (pattern.startswith(_HEAD) and pattern.endswith(_TAIL)):
        return None
    escaped = pattern[len(_HEAD) : -len(_TAIL)]
    separator = _ESCAPED.sub(r"\1", escaped)
    if re.escape(separator) != escaped:  # not what re.escape writes: not ours to read
        return None
    return BoundaryPattern(separator, pattern)


class _FeedparserRe:
    """``re`` as ``email.feedparser`` sees it after :func:`install`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)

    @staticmethod
    def compile(pattern: Any, flags: int = 0) -> Any:
        if flags == 0 and isinstance(pattern, str):
            boundary = compile_boundary(pattern)
            if boundary is not None:
                return boundary
        return re.compile(pattern, flags)


def install() -> None:
    """Give ``email.feedparser`` the view of ``re`` above (idempotent)."""
    if not isinstance(getattr(email.feedparser, "re", None), _FeedparserRe):
        setattr(email.feedparser, "re", _FeedparserRe())


__all__ = ["BoundaryPattern", "compile_boundary", "install"]
