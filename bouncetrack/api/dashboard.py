"""Placeholder router: being written (issue 5)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()


def mount_static(app: object) -> None:
    """Mount the packaged static assets (no CDN)."""
