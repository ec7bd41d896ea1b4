"""What the MIME parser may be given (issue 16): bounded bytes, in linear time.

The standard library's compat32 parser costs far more than the bytes it reads on
some shapes an attacker can send within Postfix's ``message_size_limit``: a 5 MB
MIME boundary takes ~700 MB (the boundary becomes one regular expression), a
header field with 800,000 ``;`` takes 8.7 s (parameter parsing is quadratic in
``;``, in every part, not only the top level), and 100,000 nested multiparts
with distinct boundaries take 20 s. :func:`bound` cuts those shapes down before
the parser sees them, so that what the parser gets is small and regular:

- at most :data:`PARSE_MAX_BYTES` (the report's top: the DSN parts and the
  returned original's headers come first; detectors read at most 96 KiB of a
  part anyway; no report of the shared corpus is above 100 KiB). A DSN naming
  100,000 recipients is read up to its ~3,800th;
- no line longer than :data:`LINE_MAX` (RFC 5322 §2.1.1 allows 998 characters;
  the margin keeps real-world excess intact), so no boundary either;
- no header-looking field (a line ``name:`` and its continuation lines, RFC 5322
  §2.2.3, in any part: before parsing, a part's header cannot be told from its
  body, so every such run is bounded) longer than :data:`FIELD_MAX` bytes or with
  more than :data:`PARAMS_MAX` ``;`` (RFC 2045 §5.1 parameters);
- at most :data:`DELIMITERS_MAX` lines starting with ``--`` (RFC 2046 §5.1.1
  delimiters): each part costs the parser a message object, each multipart a
  compiled expression.

Only the bytes handed to the parser are cut: the pipe stores the raw report
unchanged. A report within every bound (all real bounces seen so far) is
returned as is after a few C-speed scans; :attr:`Bounded.trimmed` names what
was cut, for the pipe's log and metrics.
"""

from __future__ import annotations

import re


PARSE_MAX_BYTES = 256 * 1024
LINE_MAX = 8 * 1024
FIELD_MAX = 16 * 1024
PARAMS_MAX = 64
DELIMITERS_MAX = 1000

# What was cut (the values of Bounded.trimmed; metric label values).
SIZE = "size"
LINE = "line"
FIELD = "field"
PARAMS = "params"
PARTS = "parts"
TRIMS = (SIZE, LINE, FIELD, PARAMS, PARTS)


class Bounded:
    """The bytes for the parser and what was cut to get them (empty: nothing)."""

    __slots__ = ("data", "trimmed")

    def __init__(self, data: bytes, trimmed: tuple[str, ...]) -> None:
        self.data = data
        self.trimmed = trimmed


def _field_name(line: bytes) -> bool:
    """``line`` starts a header field: ``name:`` with no white space in the name (RFC 5322 §3.6.8)."""
    colon = line.find(b":")
    if colon <= 0:
        return False
    name = line[:colon]
    return b" " not in name and b"\t" not in name


def _cut_params(line: bytes, keep: int) -> bytes:
    """``line`` up to (not including) its ``keep + 1``-th ``;``."""
    pos = -1
    for _ in range(keep + 1):
        pos = line.find(b";", pos + 1)
        if pos < 0:
            return line
    return line[:pos]


def bound(raw: bytes) -> Bounded:
    """``raw`` cut to the bounds of the module doc; linear in ``len(raw)``, never raises.

    Lines and fields are cut first, then the size: a report whose first line is a
    800,000-``;`` header keeps its body.
    """
    if len(raw) <= PARSE_MAX_BYTES:
        lines = raw.split(b"\n")
        if (
            max(map(len, lines)) <= LINE_MAX
            and raw.count(b";") <= PARAMS_MAX
            and raw.count(b"\n--") < DELIMITERS_MAX
        ):
            return Bounded(raw, ())
    out: list[bytes] = []
    size = 0
    delimiters = 0
    field_len = -1  # bytes of the header-looking field being read; -1: not in one
    field_params = 0
    seen: set[str] = set()
    start, n = 0, len(raw)
    while start <= n:
        end = raw.find(b"\n", start)
        stop = n if end < 0 else end
        line = raw[start : min(stop, start + LINE_MAX)]  # never copies a long line whole
        if stop - start > LINE_MAX:
            seen.add(LINE)
        start = stop + 1
        first = line[:1]
        if first == b" " or first == b"\t":
            if field_len >= 0:
                params = line.count(b";")
                field_len += len(line)
                if field_len > FIELD_MAX:
                    seen.add(FIELD)
                    # The rest of this field is dropped: on to its end at C speed.
                    m = re.compile(rb"\n[^ \t]").search(raw, stop)
                    start = m.start() + 1 if m else n + 1
                    continue
                if field_params + params > PARAMS_MAX:
                    seen.add(PARAMS)
                    line = _cut_params(line, PARAMS_MAX - field_params)
                    field_len = FIELD_MAX + 1  # drop what follows of this field
                field_params += params
        elif first == b"-" and line.startswith(b"--"):
            delimiters += 1
            if delimiters >= DELIMITERS_MAX:
                seen.add(PARTS)
                break
            field_len = -1
        elif _field_name(line):
            params = line.count(b";")
            if params > PARAMS_MAX:
                seen.add(PARAMS)
                line = _cut_params(line, PARAMS_MAX)
                params = PARAMS_MAX
            field_len, field_params = len(line), params
        else:
            field_len = -1
        size += len(line) + 1
        if size > PARSE_MAX_BYTES:
            seen.add(SIZE)
            break
        out.append(line)
    return Bounded(b"\n".join(out), tuple(t for t in TRIMS if t in seen))
