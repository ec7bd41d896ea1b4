"""MTA family detectors, one module each, behind ``base.Detector``.

Each family's ``matches`` is a cheap pre-check on headers/subject/From/the first lines of
the report, so a bounce only runs the detectors that could apply; families specialise the
generic text reader (``..text``) rather than re-implementing it.
"""

from __future__ import annotations

from .amazonses import AmazonSES
from .base import Detector, GenericText
from .courier import Courier
from .domino import Domino
from .dragonfly import DragonFly
from .exchange import Exchange
from .exim import Exim
from .fml import FML
from .gmail import Gmail
from .imailserver import IMailServer
from .interscanmss import InterScanMSS
from .mailmarshal import MailMarshal
from .messagingserver import MessagingServer
from .opensmtpd import OpenSMTPD
from .postfix import Postfix
from .qmail import Qmail
from .sendmail import Sendmail
from .googlegroups import GoogleGroups
from .yahoo import Yahoo

FAMILIES: list[Detector] = [
    AmazonSES(), GoogleGroups(), FML(), IMailServer(), InterScanMSS(), MailMarshal(), Qmail(), Exim(), Gmail(), Exchange(), DragonFly(), Postfix(), Sendmail(),
    Yahoo(), Courier(), Domino(), OpenSMTPD(), MessagingServer(),
]
GENERIC = GenericText()

__all__ = ["Detector", "FAMILIES", "GENERIC"]
