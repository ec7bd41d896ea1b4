"""fml (a Japanese mailing-list manager, www.fml.org): the list refusing a post.

The notice comes from the list's ``-admin@`` address with an ``X-MLServer`` header and a
``.FML`` Message-ID; its text names the list that refused the post as ``<list@domain>``
and says why (not a member, loop, security). The reason is the list's verdict on the
sender, never the address itself, so it is taken from fml's own fixed texts (knowledge of
its messages as catalogued by Sisimai's FML module, sisimai/go-sisimai, BSD-2-Clause),
first in the body, then in the Subject.
"""

from __future__ import annotations

from ..common import ADDR_RE, make_recipient
from ..model import BOUNCE, RecipientResult, Report
from ..view import ParsedView

# reason -> fixed texts of fml's notices (body first, then subject)
_BODY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rejected", ("You are not a member of this mailing list", "NOT MEMBER article from ",
                  "reject mail from ", "reject spammers:", " header may cause mail loop")),
    ("systemerror", ("Duplicated Message-ID", "Loop Back Warning:", " has detected a loop condition so that")),
    ("securityerror", ("Security alert:",)),
)
_SUBJECT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rejected", (" are not member", "NOT MEMBER article from ", "reject mail ",
                  "Spam mail from a spammer is rejected")),
    ("systemerror", ("fml system error message", "Loop Alert: ", "Loop Back Warning: ",
                     "WARNING: UNIX FROM Loop")),
    ("securityerror", ("Security Alert",)),
)


def _reason(text: str, table: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    for reason, phrases in table:
        for p in phrases:
            if p in text:
                return reason
    return None


class FML:
    name = "fml"

    def matches(self, view: ParsedView) -> bool:
        h = view.headers
        return ("x-mlserver" in h and "-admin@" in view.from_
                and ".FML" in h.get("message-id", ""))

    def detect(self, view: ParsedView) -> Report | None:
        text = view.report_text
        cut = text.find("Original mail as follows:")
        if cut >= 0:
            text = text[:cut]
        # each "<list@domain>" line starts one entry; the lines after it explain it
        found: list[tuple[str, list[str]]] = []
        for line in text.split("\n")[:200]:
            s = line.strip()
            if not s:
                continue
            i, j = s.find("<"), s.find(">")
            m = ADDR_RE.search(s[i + 1 : j]) if 0 <= i < j else None
            if m is not None:
                found.append((m.group(0), [s]))
            elif found:
                found[-1][1].append(s)
        if not found:
            return None
        out: list[RecipientResult] = []
        for addr, lines in found[:20]:
            diag = " ".join(lines)
            reason = _reason(diag, _BODY) or _reason(view.subject, _SUBJECT)
            out.append(make_recipient(addr, diagnostic=diag, preset=reason, reason=reason))
        return Report(kind=BOUNCE, recipients=tuple(out), detector=self.name)
