"""Reasons that only make sense knowing who wrote the message.

Two kinds of knowledge, both data plus a few lines of matching (no regex, nothing compiled
at import):

* ``family_reason``: the fixed texts an MTA family writes itself (Exim's router/transport
  messages, dma's, Gmail's), proposed as the reason before the general rules run;
* ``provider_reason``: the codes and texts a large receiving provider puts in its SMTP
  replies (Orange/La Poste "LPN007_416", Cox/Spectrum "AUP#..." codes, Tencent, Yahoo, ...),
  used when the remote host, the recipient's domain or the Received chain is that provider.

The texts are the providers' own words, as documented by them or collected in public
bounce corpora (cf. Sisimai's lhost/rhost modules, sisimai/go-sisimai, BSD-2-Clause).
"""

from __future__ import annotations

# --- MTA families: texts the MTA itself writes (case as written) -------------------------------

_FAMILY: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    # Exim: routers/transports/retry (src/route.c, dnslookup.c, appendfile.c, smtp.c, parser.c)
    "exim": (
        ("userunknown", ("user not found",)),
        ("hostunknown", ("all host address lookups failed permanently",
                         "all relevant MX records point to non-existent hosts", "Unrouteable address")),
        ("mailboxfull", ("mailbox is full", "error: quota exceed")),
        ("notaccept", ("an MX or SRV record indicated no SMTP service",
                       "no host found for existing SMTP connection")),
        ("syntaxerror", ("angle-brackets nested too deep", 'expected word or "<"',
                         "domain missing in source-routed address", "malformed address:")),
        ("systemerror", ("delivery to file forbidden", "delivery to pipe forbidden",
                         "local delivery failed", "LMTP error after ")),
        ("contenterror", ('Too many "Received" headers',)),
        ("expired", ("retry timeout exceeded", "No action is required on your part",
                     "retry time not reached for any host after a long failure period",
                     "all hosts have been failing for a long time and were last tried",
                     "Delay reason: ", "has been frozen", "was frozen on arrival by ")),
        ("mailererror", ("pipe to |",)),
    ),
    "opensmtpd": (
        ("hostunknown", ("Invalid domain name", "Domain does not exist")),
    ),
    # au/KDDI EZweb notices (cf. Sisimai's EZweb module)
    "ezweb": (
        ("suspend", ("The user(s) account is disabled.", "The user(s) account is temporarily limited.")),
        ("mailboxfull", ("The user(s) account is temporarily over quota",)),
        ("expired", ("Your message was not delivered within ",)),
    ),
    # IMail Server's own texts (cf. Sisimai's IMailServer module)
    "imailserver": (
        ("userunknown", ("Unknown user", "Invalid final delivery userid")),
        ("hostunknown", ("Unknown host",)),
        ("mailboxfull", ("User mailbox exceeds allowed size",)),
        ("virusdetected", ("Requested action not taken: virus detected",)),
        ("spamdetected", ("Blacklisted URL in message",)),
        ("expired", ("Delivery failed ",)),
    ),
}

# Texts distinctive enough to name their MTA whoever relays them: applied to every report.
_ANY_FAMILY: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Exchange 2003 NDR diagnostic codes
    ("userunknown", ("000C05A6",)),
    ("filtered", ("000C0595",)),
    ("systemerror", ("00010256", "000D06B5")),
    ("networkerror", ("00120270",)),
    ("contenterror", ("00050311", "000502CC")),
    ("securityerror", ("000B0981",)),
    # Exchange 2007+ enhanced text codes
    ("hostunknown", ("SMTPSEND.DNS.NonExistentDomain",)),
    ("networkerror", ("SMTPSEND.DNS.MxLoopback",)),
    ("userunknown", ("RESOLVER.ADR.RecipNotFound", "RESOLVER.ADR.RecipientNotFound",
                     "RESOLVER.ADR.ExRecipNotFound")),
    ("toomanyconn", ("RESOLVER.ADR.RecipLimit",)),
    ("systemerror", ("RESOLVER.ADR.BadPrimary", "RESOLVER.ADR.InvalidInSmtp", "RESOLVER.ADR.Ambiguous")),
    ("securityerror", ("RESOLVER.RST.AuthRequired",)),
    ("rejected", ("RESOLVER.RST.NotAuthorized",)),
    ("exceedlimit", ("RESOLVER.RST.RecipSizeLimit",)),
    ("expired", ("QUEUE.Expired",)),
    # Lotus Domino
    ("userunknown", ("not listed in Domino Directory", "not listed in public Name & Address Book",
                     "no se encuentra en el Directorio de Domino", "non répertorié dans l'annuaire Domino")),
    ("filtered", ("Cannot route mail to user",)),
    ("systemerror", ("Several matches found in Domino Directory",)),
    # Courier
    ("hostunknown", ("No such domain.",)),
    ("systemerror", ("This domain's DNS violates RFC 1035.",)),
    ("networkerror", ("DNS lookup failed.",)),
    # OpenSMTPD
    ("expired", ("Envelope expired",)),
    ("securityerror", ("Could not retrieve credentials",)),
    ("networkerror", ("Address family mismatch on destination MXs", "All routes to destination blocked",
                      "bad DNS lookup error code", "Could not retrieve source address", "Loop detected",
                      "Network error on destination MXs", "No valid route to remote MX",
                      "No valid route to destination", "Temporary failure in MX lookup")),
    ("notaccept", ("Destination seem to reject all mails", "No MX found for domain", "No MX found for destination")),
    # Verizon / Ipswitch IMail
    ("userunknown", ("550 - Requested action not taken: no such user here", "No valid recipients for this MM",
                     "Invalid final delivery userid")),
    ("mailboxfull", ("User mailbox exceeds allowed size",)),
    ("virusdetected", ("Requested action not taken: virus detected",)),
    ("spamdetected", ("Blacklisted URL in message",)),
    # Yahoo's reply for an address it does not have, relayed by anyone
    ("userunknown", ("dd This user doesn't have a ",)),
    # Gmail's own notices
    ("expired", ("DNS Error: Could not contact DNS servers",
                 "Delivery to the following recipient has been delayed",
                 "The recipient server did not accept our requests to connect")),
    ("hostunknown", ("DNS Error: Domain name not found",
                     "DNS Error: DNS server returned answer with no data")),
    # DragonFly Mail Agent
    ("expired", ("Could not deliver for the last ",)),
    ("hostunknown", ("DNS lookup failure: host ",)),
)

# Gmail quotes the SMTP state its client was in: "(state 14)" = after RCPT TO, etc.
_GMAIL_STATE = {"6": "failedstarttls", "8": "systemerror", "9": "failedstarttls",
                "12": "norelaying", "13": "blocked", "14": "userunknown", "15": "filtered",
                "17": "filtered", "18": "filtered"}


def family_reason(family: str, text: str) -> str | None:
    """The reason an MTA family's own fixed message names, if the text has one."""
    if "(state " in text:
        i = text.find("(state ")
        if i >= 0:
            num = text[i + 7 : i + 10].split(")", 1)[0]
            if num in _GMAIL_STATE:
                return _GMAIL_STATE[num]
    for reason, phrases in _FAMILY.get(family, ()):
        for p in phrases:
            if p in text:
                return reason
    for reason, phrases in _ANY_FAMILY:
        for p in phrases:
            if p in text:
                return reason
    return None


# --- local delivery agents -------------------------------------------------------------------

# The agent that refused a local delivery names itself ("mail.local: ", "procmail: ") and
# words the failure its own way (dovecot deliver.c, mail.local.c, ...; cf. Sisimai's LDA
# tables). Lower-case: (agent markers, ((reason, texts), ...)).
_LOCAL_AGENTS: tuple[tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]], ...] = (
    (("your message to <",), (  # dovecot: "Your message to <%t> was automatically rejected:"
        ("mailboxfull", ("not enough disk space", "quota exceeded")),
        ("userunknown", ("mailbox doesn't exist: ",)),
    )),
    (("mail.local: ",), (
        ("mailboxfull", ("disc quota exceeded", "mailbox full or quota exceeded")),
        ("systemerror", ("temporary file write error",)),
        ("userunknown", (": invalid mailbox path", ": unknown user:", ": user missing home directory",
                         ": user unknown")),
    )),
    (("procmail: ", "/procmail "), (
        ("mailboxfull", ("quota exceeded while writing", "user over quota")),
        ("systemerror", ("service unavailable",)),
        ("systemfull", ("no space left to finish writing",)),
    )),
    (("maildrop: ",), (
        ("mailboxfull", ("maildir over quota.",)),
        ("userunknown", ("cannot find system user", "invalid user specified.")),
    )),
    (("vdelivermail: ",), (  # vpopmail
        ("filtered", ("user does not exist, but will deliver to ",)),
        ("mailboxfull", ("domain is over quota", "user is over quota")),
        ("suspend", ("account is locked email bounced",)),
        ("userunknown", ("sorry, no mailbox here by that name.",)),
    )),
    (("vdeliver: ",), (  # vmailmgr
        ("mailboxfull", ("delivery failed due to system quota violation",)),
        ("userunknown", ("invalid or unknown base user or domain", "invalid or unknown virtual user",
                         "user name does not refer to a virtual user")),
    )),
)


def local_agent_reason(low: str) -> str | None:
    """The reason a local delivery agent's own message names (lower-cased text).

    An agent that names itself but says nothing known failed as a program: ``mailererror``.
    """
    for markers, table in _LOCAL_AGENTS:
        if not any(m in low for m in markers):
            continue
        if markers[0] == "your message to <" and "> was automatically rejected:" not in low:
            continue
        for reason, texts in table:
            for t in texts:
                if t in low:
                    return reason
        return "mailererror"
    return None


# --- receiving providers --------------------------------------------------------------------

# provider -> host name suffixes (remote MTA, recipient domain, Received chain)
_HOSTS: dict[str, tuple[str, ...]] = {
    "aol": (".mail.aol.com", ".mx.aol.com"),
    "apple": (".mail.icloud.com", ".apple.com", ".me.com"),
    "cox": ("cox.net",),
    "facebook": (".facebook.com",),
    "franceptt": (".laposte.net", ".orange.fr", ".wanadoo.fr"),
    "godaddy": ("smtp.secureserver.net", "mailstore1.secureserver.net"),
    "google": ("aspmx.l.google.com", "gmail-smtp-in.l.google.com", "googlemail.com"),
    "kddi": (".ezweb.ne.jp", "msmx.au.com"),
    "messagelabs": (".messagelabs.com",),
    "nttdocomo": ("mfsmax.docomo.ne.jp",),
    "spectrum": ("charter.net",),
    "tencent": (".qq.com",),
    "yahoo": (".yahoodns.net",),
}

# provider -> (reason, lower-case phrases)
_PHRASES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "aol": (
        ("hostunknown", ("host or domain name not found",)),
        ("notaccept", ("type=mx: malformed or unexpected name server reply",)),
    ),
    "apple": (
        ("authfailure", ("s dmarc policy", "blocked for failing both spf and dkim autentication checks")),
        ("blocked", ("rejected due to having a domain present in the spamhaus", "rejected due to listing in spamhaus",
                     "blocked - see https://support.proofpoint.com/dnsbl-lookup", "not accepting connections")),
        ("hasmoved", ("recipient no longer on server",)),
        ("mailboxfull", ("user is over quota",)),
        ("norelaying", ("relay access denied",)),
        ("notaccept", ("host/domain does not accept mail",)),
        ("policyviolation", ("due to local policy",)),
        ("rejected", ("sender address rejected",)),
        ("speeding", ("due to excessive volume",)),
        ("userunknown", ("inactive email address", "user does not exist", "unknown or illegal alias")),
    ),
    "cox": (
        ("blocked", ("cox too many bad commands from", "too many invalid recipients")),
        ("requireptr", ("dns check failure - try again later", "rejected - no rdns")),
        ("policyviolation", ("esmtp no data before greeting", "attachment extension is forbidden")),
        ("rejected", ("sender rejected",)),
        ("systemerror", ("esmtp server temporarily not available",)),
        ("toomanyconn", ("too many sessions from", "requested action aborted: try again later",
                         "message threshold exceeded")),
        ("userunknown", ("recipient rejected",)),
    ),
    "franceptt": (
        ("authfailure", ("spf/dns de votre nom de domaine",)),
    ),
    "godaddy": (
        ("blocked", ("rbl reject", "www.spamhaus.org/query/bl?ip=")),
        ("expired", ("has been in the queue too long", "delivery timeout")),
        ("mailboxfull", ("account storage limit",)),
        ("spamdetected", ("message rejected for spam or virus content",)),
        ("suspend", ("account disabled",)),
        ("systemerror", ("message is looping",)),
        ("userunknown", ("recipient not found", "account does not exist")),
    ),
    "kddi": (
        # au/KDDI: "550 : User unknown" is its filter, "550 <addr>: User unknown" the address
        ("filtered", ("550 : user unknown",)),
        ("userunknown", (">: user unknown",)),
    ),
    "messagelabs": (
        ("securityerror", ("please turn on smtp authentication in your mail client",)),
        ("userunknown", ("542 ", " rejected", "no such user")),
    ),
    "nttdocomo": (
        ("mailboxfull", ("552 too much mail data",)),
        ("toomanyconn", ("552 too many recipients",)),
        ("syntaxerror", ("503 bad sequence of commands", "504 command parameter not implemented")),
    ),
    "tencent": (
        ("authfailure", ("spf check failed", "dmarc check failed")),
        ("blocked", ("suspected bounce attacks", "suspected spam ip", "connection denied")),
        ("mesgtoobig", ("message too large",)),
        ("rejected", ("suspected spam", "mail is rejected by recipients")),
        ("spamdetected", ("spam is embedded in the email", "mail content denied")),
        ("speeding", ("mailbox unavailable or access denined",)),
        ("suspend", ("is a deactivated mailbox",)),
        ("syntaxerror", ("bad address syntax",)),
        ("toomanyconn", ("ip frequency limited", "domain frequency limited", "sender frequency limited",
                         "connection frequency limited")),
        ("userunknown", ("mailbox not found",)),
    ),
    "yahoo": (
        ("authfailure", ("yahoo requires all senders to authenticate with either spf or dkim",)),
        ("blocked", (" because the ip is in spamhaus's list;", "not accepted from ip addresses on spamhaus xbl")),
        ("norelaying", ("relaying denied for ",)),
        ("notcompliantrfc", ("headers are not rfc compliant",)),
        ("policyviolation", ("not accepted for policy reasons",)),
        ("rejected", ("temporarily deferred due to unexpected volume or user complaints",
                      "due to unresolvable rfc.5321 domain", " will be permanently deferred")),
        ("speeding", ("user is receiving mail too quickly",)),
        ("suspend", (" is no longer valid.", "this mailbox is disabled")),
        ("syntaxerror", ("syntax error in parameters or arguments",)),
        ("toomanyconn", ("max message per connection reached",)),
        ("userunknown", ("dd this user doesn't have a ", "mailbox not found")),
    ),
}

# Orange / La Poste: the number after the "LPN007_" / "OFR006_" / "OUK_" label.
_FRANCEPTT_CODES = {
    "101": "blocked", "102": "blocked", "103": "blocked", "104": "toomanyconn", "305": "securityerror",
    "401": "authfailure", "402": "securityerror", "403": "rejected", "405": "rejected", "415": "rejected",
    "416": "userunknown", "417": "mailboxfull", "420": "suspend", "421": "rejected", "426": "suspend",
    "505": "systemerror", "506": "spamdetected", "510": "blocked", "514": "mesgtoobig",
    "517": "authfailure", "630": "policyviolation", "999": "blocked",
}
# Facebook's documented response codes ("RCP-P2", "POL-P1", ...)
_FACEBOOK_CODES = {
    "POL-P7": "authfailure", "POL-P1": "blocked", "POL-P2": "blocked", "POL-P3": "blocked",
    "POL-P4": "blocked", "POL-T1": "blocked", "POL-T2": "blocked", "POL-T3": "blocked",
    "MSG-P2": "contenterror", "RCP-P2": "filtered", "RCP-P3": "filtered", "MSG-P1": "mesgtoobig",
    "INT-P2": "mesgtoobig", "MSG-P3": "notcompliantrfc", "DNS-P1": "rejected", "DNS-P2": "rejected",
    "DNS-T1": "rejected", "DNS-P3": "requireptr", "DNS-T2": "requireptr", "POL-P6": "spamdetected",
    "RCP-T4": "suspend", "RCP-T1": "systemerror", "CON-T1": "toomanyconn", "CON-T2": "toomanyconn",
    "CON-T3": "toomanyconn", "CON-T4": "toomanyconn", "MSG-T1": "toomanyconn",
}
# GoDaddy's documented "IBnnn" reply labels (its help page "fix rejected email with a bounce error")
_GODADDY_CODES = {
    "IB401": "securityerror", "IB501": "notcompliantrfc", "IB502": "notcompliantrfc", "IB506": "rejected",
    "IB508": "authfailure", "IB108": "requireptr", "IB212": "spamdetected", "IB705": "virusdetected",
    "IB605": "toomanyconn", "IB007": "toomanyconn", "IB101": "speeding", "IB110": "blocked",
    "IB111": "blocked", "IB112": "blocked", "IB113": "blocked", "IB504": "speeding", "IB510": "speeding",
    "IB607": "speeding", "IB103": "badreputation", "IB104": "blocked", "IB105": "blocked", "IB106": "blocked",
}
# Cox "AUP#CXBL" style codes
_COX_CODES = {
    "CXBL": "blocked", "CXDNS": "requireptr", "CXSNDR": "authfailure", "CXSMTP": "rejected",
    "CXCNCT": "toomanyconn", "CXMXRT": "toomanyconn", "CDRBL": "blocked", "CXTHRT": "securityerror",
    "CXMJ": "securityerror",
}
# Spectrum (Charter) "AUP#1000" numeric ranges
_SPECTRUM_RANGES = (
    (1000, 1000, "blocked"), (1010, 1010, "rejected"), (1020, 1080, "rejected"),
    (1090, 1090, "systemerror"), (1100, 1150, "requireptr"), (1160, 1190, "policyviolation"),
    (1200, 1250, "blocked"), (1260, 1260, "networkerror"), (1300, 1340, "toomanyconn"),
    (1350, 1490, "speeding"), (1500, 1500, "rejected"), (1520, 1520, "rejected"),
    (1530, 1530, "mesgtoobig"), (1540, 1550, "speeding"), (1560, 1560, "policyviolation"),
    (1580, 1580, "speeding"),
)


def provider_of(domain: str, hosts: str) -> str | None:
    """Which provider received the message: recipient domain first, then host names."""
    domain = domain.lower()
    if domain:
        for name, suffixes in _HOSTS.items():
            for s in suffixes:
                if s.endswith(domain) and (len(s) == len(domain) or s[-len(domain) - 1] == "."):
                    return name
    if "dns type '" in hosts:  # Google's resolver wording ("DNS type 'mx' lookup of ...")
        return "google"
    if hosts:
        for name, suffixes in _HOSTS.items():
            for s in suffixes:
                if s in hosts:
                    return name
    return None


def _franceptt(low: str) -> str | None:
    t = low.replace("_", "-")
    for label in ("lpn", "lpnaaa", "ofr", "ouk"):
        i = t.rfind(label)
        if i < 0:
            continue
        rest = t[i + len(label):].split(" ", 1)[0]
        for code, reason in _FRANCEPTT_CODES.items():
            if rest.endswith(code):
                return reason
        return None
    return None


def _aup(diag: str) -> str:
    i = diag.find("AUP#")
    if i < 0:
        return ""
    return (diag[i + 4:] + " ").split(" ", 1)[0].strip(".,;:)]")


def provider_reason(provider: str, diag: str, status: str, command: str) -> str | None:
    low = diag.lower()
    if provider == "franceptt":
        r = _franceptt(low)
        if r:
            return r
    elif provider == "cox":
        r = _COX_CODES.get(_aup(diag)) or (
            "blocked" if _aup(diag).startswith("IPBL") else "spamdetected" if _aup(diag).startswith("URLBL") else None)
        if r:
            return r
    elif provider == "godaddy":
        i = diag.find(" IB")
        if i >= 0:
            r = _GODADDY_CODES.get(diag[i + 1 : i + 6])
            if r:
                return r
    elif provider == "facebook":
        for code, reason in _FACEBOOK_CODES.items():
            if code in diag:
                return reason
    elif provider == "spectrum":
        digits = "".join(c if c.isdigit() else " " for c in _aup(diag)).split()
        code = digits[0] if digits else ""
        if len(code) == 4:
            n = int(code)
            for lo, hi, reason in _SPECTRUM_RANGES:
                if lo <= n <= hi:
                    return reason
        return None
    elif provider == "nttdocomo":
        if status in ("5.1.1",):
            return "userunknown"
        if status == "5.2.0":
            return "filtered"
    elif provider == "google":
        # Google's DNS failure texts; the class of the status tells permanent from transient
        if "null mx" in low:
            return "notaccept"
        if " had no relevant answers." in low or "responded with code nxdomain" in low or "domain name not found" in low:
            return "hostunknown" if status.startswith("5") else "networkerror"
        if "because the address couldn't be found. check for typos" in low:
            return "userunknown"
    for reason, phrases in _PHRASES.get(provider, ()):
        for p in phrases:
            if p in low:
                return reason
    if provider == "nttdocomo" and status == "5.0.0":
        return {"RCPT": "userunknown", "DATA": "rejected"}.get(command)
    return None
