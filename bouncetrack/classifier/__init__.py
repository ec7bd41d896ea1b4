"""Bounce classification: a pure library, no I/O. ``classify(raw: bytes) -> Report``."""
