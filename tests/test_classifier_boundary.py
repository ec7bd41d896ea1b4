"""The parser's boundaries without a pattern compiled per multipart (classifier/boundary.py).

email.feedparser must parse every message into the same tree as with its own compiled
pattern: same parts, preambles, epilogues, payloads and defects, on the shared corpus,
the test suite's own bounces and boundaries built to be awkward (regex metacharacters,
backslashes, spaces, a boundary that is a prefix of another, no closing boundary).
"""

from __future__ import annotations

import email.feedparser
import os
import re
from email.message import Message
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Iterator

import pytest

from bouncetrack.classifier import boundary, view  # noqa: F401  (view installs it)
from tests import mailgen

CHECKOUT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BOUNCETRACK_SHARED") or CHECKOUT.parent / "shared")
CORPUS = SHARED / "corpus" / "sisimai"


def tree(msg: Message) -> list[Any]:
    out: list[Any] = []
    for part in msg.walk():
        payload = part.get_payload()
        out.append((part.get_content_type(), part.preamble, part.epilogue, list(part.items()),
                    None if isinstance(payload, list) else payload, [type(d).__name__ for d in part.defects]))
    return out


def parse_without_shim(raw: bytes) -> Message:
    installed = getattr(email.feedparser, "re")
    setattr(email.feedparser, "re", re)
    try:
        return BytesParser().parsebytes(raw)
    finally:
        setattr(email.feedparser, "re", installed)


def awkward() -> Iterator[bytes]:
    for b in ("simple", "a.b*c+d?e(f)[g]{h}|i^j$k", "back\\slash\\", "with space", "x", "x--y", "=_Part_0_1.2",
              "ünïcode", "-- ", "\t"):
        q = b.replace("\\", "\\\\").replace('"', '\\"')
        for closing in (True, False):
            yield (f'Content-Type: multipart/report; report-type=delivery-status; boundary="{q}"\n\n'
                   f"preamble\n--{b}\nContent-Type: text/plain\n\nfailed\n--{b}x\nnot a boundary\n"
                   f"--{b}  \t\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@b\nAction: failed\n"
                   f"\n--{b}\r\nContent-Type: multipart/mixed; boundary=\"{q}-inner\"\n\n--{q}-inner\n\ninner\n"
                   f"--{b}-inner--\n{'--' + b + '--' if closing else ''}\nepilogue\n").encode("utf-8")


def messages() -> Iterator[tuple[str, bytes]]:
    if CORPUS.is_dir():
        for path in sorted(CORPUS.glob("*.eml")):
            yield path.name, path.read_bytes()
    yield "mailgen.dsn", mailgen.dsn("b+token@bounce.test", "unknown@remote.test")
    for i, raw in enumerate(awkward()):
        yield f"awkward-{i}", raw


def test_every_message_parses_into_the_same_tree() -> None:
    assert isinstance(getattr(email.feedparser, "re"), boundary._FeedparserRe)
    n = 0
    for name, raw in messages():
        assert tree(BytesParser().parsebytes(raw)) == tree(parse_without_shim(raw)), name
        n += 1
    assert n >= (300 if CORPUS.is_dir() else 20)


@pytest.mark.parametrize("separator", ["--simple", "--a.b*c", "--back\\slash", "--x y", "--\t", "--ü"])
def test_a_boundary_pattern_matches_where_the_compiled_one_does(separator: str) -> None:
    pattern = "(?P<sep>" + re.escape(separator) + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
    ours, theirs = boundary.compile_boundary(pattern), re.compile(pattern)
    assert ours is not None
    for tail in ("", "\n", "\r\n", "\r", "--", "--\n", "  \t\r\n", "x\n", " x", "--x", "\n\n", "-- \n"):
        for line in (separator + tail, separator[:-1] + tail, "x" + separator + tail):
            a, b = ours.match(line), theirs.match(line)
            assert (a is None) == (b is None), repr(line)
            if a is not None and b is not None:
                assert [a.group(g) for g in ("end", "ws", "linesep")] == [b.group(g) for g in ("end", "ws", "linesep")]


def test_other_patterns_are_compiled_by_re() -> None:
    shim = getattr(email.feedparser, "re")
    assert shim.compile(r"(\r\n|\r|\n)\Z").pattern == r"(\r\n|\r|\n)\Z"
    assert isinstance(shim.compile(r"(\r\n|\r|\n)\Z"), re.Pattern)
    assert boundary.compile_boundary("(?P<sep>a(b" + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$") is None
    assert shim.escape("a.b") == re.escape("a.b")  # everything else is re's
