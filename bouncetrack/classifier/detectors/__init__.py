"""MTA family detectors, one module each, behind ``base.Detector``."""

from __future__ import annotations

from .amazonses import AmazonSES
from .base import Detector, GenericText

FAMILIES: list[Detector] = [AmazonSES()]
GENERIC = GenericText()

__all__ = ["Detector", "FAMILIES", "GENERIC"]
