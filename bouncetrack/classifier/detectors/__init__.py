"""MTA family detectors, one module each, behind ``base.Detector``."""

from __future__ import annotations

from .base import Detector, GenericText

FAMILIES: list[Detector] = []
GENERIC = GenericText()

__all__ = ["Detector", "FAMILIES", "GENERIC"]
