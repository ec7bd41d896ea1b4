"""Reason taxonomy: (diagnostic text, RFC 3463 status, SMTP reply code) -> reason.

Order of evidence: text patterns first (most specific: "mailbox full" beats a bare 5.0.0),
then the status code's subject/detail (RFC 3463 §3), then the reply code (RFC 5321 §4.2).
Also infers a status/reply code from free text when the report carries none.
"""

from __future__ import annotations

import re

from .model import HARD_REASONS

# Strong, specific phrases: (reason, pattern) in priority order; applied to lower-cased,
# whitespace-collapsed text. These beat the status code.
_STRONG_RULES: list[tuple[str, str]] = [
    ("mailererror", r"x-unix;|\bmailer error\b|\bcommand (?:died|failed)|\bprocmail\b|"
                    r"program exited|\bexit code\b|\bpipe to \||local delivery failed|unknown mailer error"),
    ("hasmoved", r"\bhas (?:been )?moved\b|no longer (?:with|at|available at)|address has changed|"
                 r"\buser has moved\b|not our customer"),
    ("virusdetected", r"\bvirus\b|\bmalware\b|\binfected\b|\btrojan\b"),
    ("toomanyconn", r"too many (?:concurrent |simultaneous |open )?connections|connection (?:rate )?limit|"
                    r"too many (?:smtp )?sessions|maximum (?:number of )?connections|too many recipients|"
                    r"temporarily deferred due to unexpected volume"),
    ("exceedlimit", r"header size exceeds|message header (?:size|too)|recipsizelimit|"
                    r"(?:message )?length exceeds (?:the )?(?:administrative )?limit|exceeds? (?:the )?limit set by"),
    ("mesgtoobig", r"message (?:is )?too (?:large|big)|(?:message|mail|email) size (?:exceeds|limit|too)|"
                   r"exceeds? (?:the )?(?:maximum )?(?:message )?size|size limit exceeded|"
                   r"too big for|\bmessage too long\b|exceeds? maximum (?:allowed )?size|line limit exceeded"),
    ("mailboxfull", r"mailbox (?:is )?full|\bover ?quota\b|quota (?:exceeded|exceed|full|violation)|"
                    r"exceed(?:ed|s)? (?:the |his |her |their |your |its )?(?:mailbox |storage |disk )?quota|"
                    r"mailbox (?:size|storage) (?:limit )?exceeded|exceeded (?:storage|the storage)|"
                    r"insufficient (?:disk |storage )?space|not enough (?:disk |storage )?space|"
                    r"(?:mail ?box|inbox|mail folder|mailfolder|storage) (?:is |has )?(?:full|exceeded)|"
                    r"user (?:is )?over (?:the )?quota|full mailbox|disk quota|\bquota\b.{0,30}\bfull\b|"
                    r"mailbox has exceeded|out of (?:mailbox )?space|\bmail ?box full\b|too much mail"),
    ("norelaying", r"relay(?:ing)? (?:access )?(?:denied|not (?:permitted|allowed))|unable to relay|"
                   r"(?:we )?do not relay|not permitted to relay|no relaying|relay not permitted|"
                   r"not a gateway|relaying (?:mail )?(?:to .{1,80} )?(?:is )?(?:denied|prohibited|refused)|"
                   r"cannot relay|not allowed to relay|is not permitted to relay|insecure mail relay|"
                   r"not configured to relay|open relay"),
    ("badreputation", r"\breputation\b|\bsender score\b"),
    ("speeding", r"rate limit|too many (?:messages|emails|mails)|sending rate|\bthrottl|slow down|"
                 r"receiving mail at a rate|too fast|exceeded (?:the )?(?:message )?rate|"
                 r"rate that prevents additional messages"),
    ("spamdetected", r"(?:rejected|refused|blocked) (?:due to|because of|as) (?:spam|junk)|spam classification|"
                     r"(?:classified|detected|identified|marked|considered) as (?:spam|junk)|spam (?:detected|score)"),
    ("notaccept", r"(?:does not|doesn'?t|do not|not) receive (?:any )?(?:e-?)?mails?\b"),
    ("hostunknown", r"host or domain name not found"),
    ("blocked", r"refused to talk to me|client host (?:\[[^\]]*\] )?(?:rejected|blocked)"),
    ("networkerror", r"name service error|\bdns error|host not found, try again|could not deliver for the last|"
                     r"temporary (?:dns|name) (?:failure|error)"),
    ("requireptr", r"reverse (?:dns|lookup|address|hostname|ip)|\bptr\b|\brdns\b|"
                   r"cannot find your hostname|no reverse|hostname (?:does not|doesn'?t) match|"
                   r"ip address has no (?:ptr|name)|resolve your (?:address|hostname)|ip name lookup failed|"
                   r"client host .{0,60}(?:unknown|cannot be resolved)|unresolvable (?:address|host)|"
                   r"mismatches client ip|ip (?:address )?(?:does not match|mismatch)"),
    ("authfailure", r"\bspf\b|\bdkim\b(?!-signature)|\bdmarc\b|sender policy framework|domainkeys|"
                    r"unauthenticated (?:e-?mail|mail|message)|authentication (?:check(?:s)? )?fail|"
                    r"not (?:pass|passed) (?:spf|dkim|authentication)|is not authorized to send|"
                    r"fails? to pass authentication|authentication information|multiple authentication"),
    ("failedstarttls", r"starttls|\btls (?:negotiation|handshake)|ssl handshake|tls required but"),
    ("securityerror", r"authentication required|must (?:be )?authenticat|encryption required|"
                      r"not authenticated|authentication is required|unauthenticated senders?|"
                      r"submission requires|certificate|delivery not authorized"),
    ("notcompliantrfc", r"rfc ?(?:5322|2822|822)\b(?!;)|not (?:rfc[- ]?)?compliant|duplicate header|"
                        r"multiple (?:addresses in )?(?:from|to|subject|date|message-id)|missing (?:required )?header|"
                        r"malformed (?:header|message)|invalid header|header (?:is )?not (?:valid|compliant)"),
    ("spamdetected", r"\bspam\b(?! ?(?:haus|cop))|junk ?mail|unsolicited|\bspammy\b|\buce\b|\bphish|"
                     r"blacklisted url|message content rejected"),
    ("hostunknown", r"host (?:or domain name )?(?:not found|unknown)|unknown host|domain (?:name )?(?:not found|unknown|"
                    r"is not valid|invalid|not reachable|is not reachable)|no such domain|unknown domain|"
                    r"name or service not known|\bnxdomain\b|unrouteable (?:mail )?domain|"
                    r"unroutable domain|domain (?:lookup|name) fail|"
                    r"all relevant mx records point to non-existent hosts|no such host|"
                    r"host name lookup failure|unresolvable domain|"
                    r"recipient domain .{0,40}(?:does not exist|not found|invalid)|"
                    r"(?:recipient|destination) (?:domain|system) (?:address )?(?:is )?(?:unknown|invalid|bad)|bad destination system|"
                    r"account or domain may not exist|dns lookup failure"),
    ("suspend", r"(?<!temporarily )\bsuspended\b|(?:account|mailbox|user|address) (?:has been |is |was )?"
                r"(?:temporar(?:y|ily) )?(?:disabled|deactivated|inactive|locked|frozen|terminated|closed|expired|not active|suspended)|"
                r"\binactive\b|\bdeactivated\b|temporarily disabled|extended inactivity|"
                r"mailbox (?:is )?unavailable due to|mailbox disabled|account disabled|"
                r"\btemporar(?:y|ily) (?:locked|disabled)|(?:account|mailbox)\b.{0,40}\bis (?:disabled|deactivated|suspended)"),
    ("userunknown", r"user (?:is )?unknown|unknown (?:local[- ]part|user|recipient|mailbox|alias|account|"
                    r"e-?mail address)|no such (?:user|mailbox|recipient|account|local user|person|e-?mail)|"
                    r"(?:user|recipient|mailbox|account|addressee|alias|e-?mail address|local part|"
                    r"person|email account)(?: name)? (?:(?:is |was )?not (?:found|known|listed|exist)|"
                    r"(?:does not|doesn'?t|did not) exist|unknown|is not recognized|not recognized)|"
                    r"(?:invalid|bad|non-?existent|nonexistent|illegal) "
                    r"(?:destination )?(?:recipient|user|mailbox|account|alias|e-?mail)|"
                    r"no mailbox (?:here|by|for)|mailbox unavailable|unrouteable address|unroutable address|"
                    r"not a valid (?:user|mailbox|recipient)|not our customer|"
                    r"doesn'?t have an? .{1,40} account|unknown or illegal|not listed in (?:the )?(?:domino|public|directory)|"
                    r"no valid recipients|mailbox not available|recipient not (?:found|valid)|"
                    r"addressee unknown|no such e-?mail|user (?:not|isn'?t) (?:here|local)|"
                    r"mailbox not found|user not found|account not found|user not exist|"
                    r"(?:account|mailbox|address) (?:that you tried to reach )?does not exist|"
                    r"bad destination mailbox|recipient rejected|rejected recipient|"
                    r"unknown address|address unknown|invalid address|user does not exist"),
    ("notaccept", r"(?:does not|doesn'?t|do not|not) accept(?:ing)? (?:any )?(?:e-?)?mail|null mx|"
                  r"mail (?:receiving|reception) (?:is )?disabled|no mx (?:record|host)|no mx found|"
                  r"not accept(?:ing)? (?:any )?(?:network )?messages|indicated no smtp service|"
                  r"couldn'?t find a mail exchanger|system not accepting"),
    ("policyviolation", r"\bpolicy (?:violation|reasons?)|violates? (?:our |the )?(?:\w+ )?polic|prohibited|"
                        r"content presents|not accepted for policy"),
    ("blocked", r"black ?list|\bdnsbl\b|\brbl\b|spamhaus|spamcop|sorbs|\bbanned\b|"
                r"client host (?:\[[^\]]*\] )?rejected|\bip (?:address )?(?:[\d.]+ )?(?:is )?(?:listed|blocked|banned|not allowed)|"
                r"listed (?:in|on|at) |connection (?:refused|rejected|denied) (?:by|from)|"
                r"(?:your|sending|sender|client) (?:ip|host|network|mail server)|messages from [\d.]+ |"
                r"\bblock ?list|(?:has been |was |is )?blocked|refused to talk|poor reputation"),
    ("filtered", r"recipient preferences|user (?:refuses|refused|has (?:blocked|rejected))|"
                 r"not authorized to receive|refused by (?:the )?recipient|rejected by (?:the )?recipient|"
                 r"(?:is|are) not accepting (?:mail|messages) from|message filtered|content filter"),
    ("rejected", r"sender (?:address )?(?:rejected|refused|denied|verify failed|unknown|invalid|blocked|not allowed)|"
                 r"(?:domain|address) of (?:the )?sender|sender verif|mail from (?:rejected|refused)|"
                 r"unknown sender|invalid sender|bad sender|sender domain|envelope sender|"
                 r"badmailfrom|sender was rejected|from: domain is invalid|"
                 r"sending from a different address|you are sending to/from an address"),
    ("syntaxerror", r"syntax error|command (?:unrecognized|not (?:recognized|implemented))|"
                    r"unrecognized command|bad sequence of commands|invalid command"),
    ("systemfull", r"system (?:is )?full|insufficient system storage|out of (?:disk|storage)|"
                   r"disk (?:is )?full|no space left"),
    ("expired", r"could not deliver for the last|giving up on|retry time(?:out)? (?:exceeded|not reached for any host after a long)|"
                r"(?:delivery|message) (?:time )?expired|expired after|message expired|"
                r"(?:could not|couldn'?t|was not|wasn'?t|has not been) (?:be )?delivered (?:within|for) |"
                r"queue (?:life ?time|time)|too long in (?:the )?queue|unable to deliver .{0,60}for \d+ (?:days|hours)|"
                r"failing for a long time|delivery attempts (?:have )?(?:failed|expired)|"
                r"message has been in the queue|will be retried|delivery period expired|"
                r"\bdays\b.{0,40}(?:undeliverable|expired)"),
    ("networkerror", r"connection (?:timed out|time ?out|refused|reset|lost|closed|failure|died)|"
                     r"no route to host|network (?:is )?unreachable|lost connection|network error|"
                     r"could not connect|couldn'?t connect|unable to connect|can'?t connect|"
                     r"(?:mail|routing) loop|loops? back to myself|too many hops|hop count|"
                     r"timed? ?out|did not accept our requests to connect|name service error|"
                     r"name server|dns lookup|host not found, try again"),
    ("systemerror", r"system (?:error|failure)|internal (?:server )?error|server error|"
                    r"local error|unrecoverable|configuration error|resources? (?:temporarily )?unavailable|"
                    r"out of memory|transaction failed|service (?:currently )?unavailable|temporary failure"),
    ("onhold", r"\bon hold\b"),
    ("contenterror", r"illegal character|invalid character|content error|media error|improper use of 8"),
]

# Weak, generic phrases: used only when neither a strong phrase nor a specific status decides.
_WEAK_RULES: list[tuple[str, str]] = [
    ("userunknown", r"does not exist|doesn'?t exist|not exist|no longer (?:exists|valid)|"
                    r"(?:is|are) not (?:a )?(?:valid|known) |no account|undeliverable address|"
                    r"recipient (?:address )?(?:rejected|refused|denied)|bad address|"
                    r"invalid recipient|unknown$|address rejected|mailbox"),
    ("hostunknown", r"recipient domain|no (?:valid )?mx|domain .{1,80} (?:does not exist|not found)|"
                    r"could not be resolved|dns (?:error|failure)"),
    ("filtered", r"\bfilter(?:ed|ing)?\b|content rejected|delivery not authorized|message refused"),
    ("blocked", r"\bhelo\b|\behlo\b|greylist|grey-list|graylist|not allowed to (?:send|connect)|access denied"),
    ("securityerror", r"\bsecurity\b"),
    ("rejected", r"from address|return[- ]path|rejected by|refused by|administratively (?:denied|prohibited)|"
                 r"\brejected\b|\brefused\b|\breject\b"),
    ("policyviolation", r"\bpolicy\b|not allowed|violat"),
    ("contenterror", r"8-?bit|content (?:error|type)|message body|\bmime\b"),
    ("systemerror", r"try (?:again )?later|temporarily unavailable|server (?:is )?(?:busy|unavailable)|"
                    r"service (?:not available|unavailable)"),
]

# Literal pre-checks, one tuple per strong rule in the same order: every alternative of the
# rule contains one of these substrings, so a cheap ``in`` test skips most regex scans.
_STRONG_TRIGGERS: list[tuple[str, ...]] = [
    ("x-unix", "mailer", "command", "procmail", "program exited", "exit code", "pipe to", "local delivery"),
    ("moved", "no longer", "address has changed", "not our customer"),
    ("virus", "malware", "infected", "trojan"),
    ("too many", "connection", "deferred due to unexpected volume"),
    ("header", "recipsizelimit", "length exceeds", "limit set by"),
    ("too large", "too big", "size", "too long", "line limit"),
    ("mailbox", "mail box", "quota", "storage", "space", "full", "inbox", "folder", "too much mail"),
    ("relay", "not a gateway"),
    ("reputation", "sender score"),
    ("rate", "too many", "throttl", "slow down", "too fast"),
    ("spam", "junk"),
    ("receive",),
    ("host or domain",),
    ("refused to talk", "client host"),
    ("name service", "dns", "host not found", "could not deliver for", "temporary"),
    ("reverse", "ptr", "rdns", "hostname", "ip address has no", "resolve your", "ip name lookup", "client host",
     "unresolvable", "mismatch", "does not match"),
    ("spf", "dkim", "dmarc", "sender policy", "domainkeys", "authenticat", "not authorized to send"),
    ("starttls", "tls", "ssl handshake"),
    ("authenticat", "encryption", "submission", "certificate", "delivery not authorized"),
    ("rfc", "compliant", "duplicate header", "multiple", "missing", "malformed", "header"),
    ("spam", "junk", "unsolicited", "uce", "phish", "blacklisted url", "message content rejected"),
    ("host", "domain", "name or service", "nxdomain", "mx records", "destination", "recipient", "dns lookup"),
    ("suspend", "disabled", "deactivated", "inactiv", "locked", "frozen", "terminated", "closed", "expired",
     "not active", "unavailable due to"),
    ("user", "unknown", "no such", "not found", "not known", "not listed", "exist", "invalid", "bad", "non",
     "illegal", "mailbox", "unrout", "not a valid", "customer", "account", "recipient", "address"),
    ("accept", "null mx", "mail receiving", "mail reception", "no mx", "smtp service", "mail exchanger"),
    ("polic", "prohibited", "violat", "content presents"),
    ("black", "dnsbl", "rbl", "spamhaus", "spamcop", "sorbs", "banned", "client host", "ip", "listed",
     "connection", "your", "sending", "sender", "client", "messages from", "block", "refused to talk", "reputation"),
    ("recipient preferences", "user ref", "user has", "not authorized to receive", "by the recipient",
     "by recipient", "not accepting", "filter"),
    ("sender", "mail from", "badmailfrom", "from: domain", "different address", "to/from"),
    ("syntax", "command"),
    ("full", "insufficient system", "out of", "no space"),
    ("could not", "couldn", "giving up", "retry time", "expired", "was not", "wasn", "has not been", "queue",
     "unable to deliver", "failing for a long time", "delivery attempts", "will be retried", "days"),
    ("connect", "route", "network", "loop", "hop", "time", "name service", "name server", "dns lookup",
     "host not found"),
    ("system", "internal", "server error", "local error", "unrecoverable", "configuration", "resource",
     "out of memory", "transaction failed", "service", "temporary failure"),
    ("on hold",),
    ("character", "content error", "media error", "improper use"),
]
assert len(_STRONG_TRIGGERS) == len(_STRONG_RULES)
_STRONG_RE = [(r, re.compile(p)) for r, p in _STRONG_RULES]
_STRONG_CHECKED = list(zip(_STRONG_TRIGGERS, _STRONG_RE))
_WEAK_RE = [(r, re.compile(p)) for r, p in _WEAK_RULES]
# Status codes whose meaning is too broad to override the text (RFC 3463 §3.5-3.8 "other").
_AMBIGUOUS_DETAIL = frozenset({"0.0", "5.0", "7.1", "7.0", "1.0", "2.0", "3.0", "4.0", "6.0"})

# RFC 3463 §3: "class.subject.detail" -> reason, most specific first.
_STATUS_MAP: dict[str, str] = {
    "1.1": "userunknown",      # Bad destination mailbox address
    "1.2": "hostunknown",      # Bad destination system address
    "1.3": "userunknown",      # Bad destination mailbox address syntax
    "1.4": "userunknown",      # Destination mailbox address ambiguous
    "1.5": "delivered",        # Destination address valid
    "1.6": "hasmoved",         # Destination mailbox has moved, no forwarding address
    "1.7": "rejected",         # Bad sender's mailbox address syntax
    "1.8": "rejected",         # Bad sender's system address
    "1.9": "rejected",         # RFC 3886: message relayed to non-compliant mailer
    "1.10": "notaccept",       # RFC 7505 §4.2: recipient address has null MX
    "2.0": "filtered",         # Other or undefined mailbox status
    "2.1": "suspend",          # Mailbox disabled, not accepting messages
    "2.2": "mailboxfull",      # Mailbox full
    "2.3": "exceedlimit",      # Message length exceeds administrative limit
    "2.4": "systemerror",      # Mailing list expansion problem
    "3.0": "systemerror",
    "3.1": "systemfull",       # Mail system full
    "3.2": "notaccept",        # System not accepting network messages
    "3.3": "systemerror",      # System not capable of selected features
    "3.4": "mesgtoobig",       # Message too big for system
    "3.5": "systemerror",      # System incorrectly configured
    "4.0": "networkerror",
    "4.1": "networkerror",     # No answer from host
    "4.2": "networkerror",     # Bad connection
    "4.3": "systemerror",      # Directory server failure
    "4.4": "hostunknown",      # Unable to route
    "4.5": "toomanyconn",      # Mail system congestion
    "4.6": "networkerror",     # Routing loop detected
    "4.7": "expired",          # Delivery time expired
    "5.0": "syntaxerror",
    "5.1": "syntaxerror",      # Invalid command
    "5.2": "syntaxerror",      # Syntax error
    "5.3": "exceedlimit",      # Too many recipients
    "5.4": "syntaxerror",      # Invalid command arguments
    "5.5": "syntaxerror",      # Wrong protocol version
    "6.0": "contenterror",
    "6.1": "contenterror",     # Media not supported
    "6.2": "contenterror",
    "6.3": "contenterror",
    "6.4": "contenterror",
    "6.5": "contenterror",
    "6.6": "contenterror",
    "6.7": "contenterror",
    "7.0": "securityerror",
    "7.1": "securityerror",    # Delivery not authorized, message refused
    "7.2": "filtered",         # Mailing list expansion prohibited
    "7.3": "securityerror",
    "7.4": "securityerror",
    "7.5": "securityerror",
    "7.6": "securityerror",
    "7.7": "securityerror",
    "7.8": "securityerror",    # RFC 4954 §6: authentication credentials invalid
    "7.9": "securityerror",
    "7.10": "failedstarttls",  # RFC 5248: encryption needed
    "7.11": "failedstarttls",  # RFC 3207 / RFC 5248: encryption required
    "7.13": "suspend",         # RFC 5248: user account disabled
    "7.14": "securityerror",
    "7.15": "securityerror",
    "7.16": "mailboxfull",
    "7.17": "suspend",
    "7.18": "suspend",
    "7.19": "suspend",
    "7.20": "authfailure",     # RFC 7372 §3.1: no passing DKIM signature
    "7.21": "authfailure",
    "7.22": "authfailure",
    "7.23": "authfailure",     # RFC 7372 §3.2: SPF validation failed
    "7.24": "authfailure",
    "7.25": "requireptr",      # RFC 7372 §3.3: reverse DNS validation failed
    "7.26": "authfailure",     # RFC 7372 §3.4: multiple authentication checks failed
    "7.27": "notaccept",       # RFC 7505 §4.1: sender address has null MX
    "7.28": "spamdetected",    # RFC 8689? mail flood detected
    "7.29": "securityerror",
    "7.30": "securityerror",
}

# Reply code (RFC 5321 §4.2.3) fallbacks, used only without text or status evidence.
_REPLY_MAP: dict[str, str] = {
    "421": "systemerror", "450": "onhold", "451": "systemerror", "452": "mailboxfull",
    "550": "onhold", "551": "hasmoved", "552": "mailboxfull", "553": "userunknown",
    "554": "onhold", "521": "notaccept", "556": "notaccept", "530": "securityerror",
    "535": "securityerror", "500": "syntaxerror", "501": "syntaxerror", "502": "syntaxerror",
    "503": "syntaxerror", "504": "syntaxerror",
}

# Reason -> a status to report when the message carries none (RFC 3463 §3 codes).
_INFER_STATUS: dict[str, str] = {
    "userunknown": "1.1", "hostunknown": "1.2", "hasmoved": "1.6", "notaccept": "1.10",
    "mailboxfull": "2.2", "filtered": "2.1", "suspend": "2.1", "exceedlimit": "2.3",
    "mesgtoobig": "3.4", "systemfull": "3.1", "systemerror": "3.0", "networkerror": "4.1",
    "toomanyconn": "4.5", "expired": "4.7", "syntaxerror": "5.2", "contenterror": "6.0",
    "notcompliantrfc": "6.0", "norelaying": "7.1", "blocked": "7.1", "rejected": "7.1",
    "spamdetected": "7.1", "policyviolation": "7.1", "virusdetected": "7.1",
    "securityerror": "7.0", "authfailure": "7.26", "requireptr": "7.25",
    "failedstarttls": "7.10", "speeding": "7.1", "badreputation": "7.1",
    "mailererror": "3.0",
}

STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d]|\.\d)")
# A reply code at the start of a line or after "said:", "error:", ...; followed by space,
# hyphen (RFC 5321 §4.2.1 multi-line) or end.
REPLY_RE = re.compile(r"(?:^|[\s:;(\[\"'<>=])([245][0-5]\d)(?=[ \-]|$)", re.MULTILINE)
_PSEUDO_RE = re.compile(r"^[245]\.0\.9\d\d$")
_WS_RE = re.compile(r"\s+")

TEXT_SCAN_CAP = 1500


def find_status(text: str) -> str | None:
    """First RFC 3463 enhanced status code in free text (not an IP address or version)."""
    for m in STATUS_RE.finditer(text):
        st = m.group(0)
        if _PSEUDO_RE.match(st):
            continue
        start = m.start()
        # reject parts of dotted quads "10.5.1.1" / "192.0.2.1"
        if start > 0 and text[start - 1] == ".":
            continue
        return st
    return None


def find_reply_code(text: str) -> str | None:
    m = REPLY_RE.search(text)
    return m.group(1) if m else None


def _norm(text: str) -> str:
    return _WS_RE.sub(" ", text[:TEXT_SCAN_CAP].lower())


def reason_from_text(text: str, weak: bool = True) -> str | None:
    if not text:
        return None
    t = _norm(text)
    for triggers, (reason, rx) in _STRONG_CHECKED:
        for w in triggers:
            if w in t:
                if rx.search(t):
                    return reason
                break
    if weak:
        for reason, rx in _WEAK_RE:
            if rx.search(t):
                return reason
    return None


def reason_from_status(status: str | None) -> str | None:
    if not status:
        return None
    parts = status.split(".")
    if len(parts) != 3:
        return None
    if parts[0] == "2":
        return "delivered"  # RFC 3463 §3.1: 2.X.X success
    key = parts[1] + "." + parts[2]
    r = _STATUS_MAP.get(key)
    if r is None and parts[2] == "0":
        return None
    return r


def classify_reason(diagnostic: str | None, status: str | None, reply_code: str | None) -> str:
    """Strong text phrase > specific status (RFC 3463) > weak phrase > broad status > reply code."""
    r = reason_from_text(diagnostic or "", weak=False)
    if r is not None:
        return r
    specific = None
    if status:
        parts = status.split(".")
        if len(parts) == 3 and (parts[1] + "." + parts[2]) not in _AMBIGUOUS_DETAIL:
            specific = reason_from_status(status)
    if specific is not None:
        return specific
    if diagnostic:
        t = _norm(diagnostic)
        for reason, rx in _WEAK_RE:
            if rx.search(t):
                return reason
    r = reason_from_status(status)
    if r is not None:
        return r
    if reply_code and reply_code in _REPLY_MAP:
        return _REPLY_MAP[reply_code]
    return "undefined"


def infer_status(reason: str, reply_code: str | None, temporary: bool | None = None) -> str | None:
    """A status for a report that has none (RFC 3463 §3.1 class from the reply code)."""
    detail = _INFER_STATUS.get(reason)
    if detail is None:
        return None
    if reply_code and reply_code[0] in "45":
        cls = reply_code[0]
    elif temporary is not None:
        cls = "4" if temporary else "5"
    elif reason in ("expired", "toomanyconn", "speeding"):
        cls = "4" if reason != "expired" else "5"
    else:
        cls = "5"
    return f"{cls}.{detail}"


def is_hard(reason: str) -> bool:
    return reason in HARD_REASONS


__all__ = [
    "classify_reason", "find_reply_code", "find_status", "infer_status", "is_hard",
    "reason_from_status", "reason_from_text",
]
