"""Shared test fixtures: the shared material and the real-Postfix stack.

``SHARED``: env ``BOUNCETRACK_SHARED`` or ``<checkout>/../shared`` (spec, corpus, notes).

``stack``: one :class:`bouncetrack.harness.stack.Stack` per test module (starting a
private Postfix costs ~1–2 s). A module chooses its options with a module-level
``STACK_OPTIONS = {"with_milter": False, "pipe": "files", ...}`` (keyword arguments of
``Stack``). Skipped with a reason when not root or Postfix is not installed. When a
test that uses it fails, the Postfix and milter logs are attached to its report.
``make_stack``: a factory for tests that need their own stack (closed after the test).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BOUNCETRACK_SHARED") or CHECKOUT.parent / "shared")


def harness_unavailable() -> str | None:
    """Why the real-Postfix harness cannot run here, or None."""
    from bouncetrack.harness.stack import unavailable_reason

    return unavailable_reason()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome: Any = yield
    rep = outcome.get_result()
    if rep.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("stack", "own_stack"):
            st = funcargs.get(name)
            if st is not None and hasattr(st, "logs"):
                try:
                    rep.sections.append((f"bouncetrack harness logs ({name})", st.logs()))
                except Exception as exc:  # noqa: BLE001 - never hide the real failure
                    rep.sections.append(("bouncetrack harness logs", f"unavailable: {exc}"))


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Any]:
    reason = harness_unavailable()
    if reason:
        pytest.skip(reason)
    from bouncetrack.harness.stack import Stack

    options = dict(getattr(request.module, "STACK_OPTIONS", {}))
    with Stack(**options) as st:
        yield st


@pytest.fixture
def make_stack() -> Iterator[Callable[..., Any]]:
    reason = harness_unavailable()
    if reason:
        pytest.skip(reason)
    from bouncetrack.harness.stack import Stack

    made: list[Stack] = []

    def factory(**options: Any) -> Stack:
        st = Stack(**options)
        made.append(st)
        return st.start()

    yield factory
    for st in made:
        st.close()
