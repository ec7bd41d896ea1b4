"""The pipe(8) command: one bounce in on stdin, stored (exit 0) or retried (exit 75).

Postfix runs this once per bounce (master.cf: ``argv=… pipe --config F
${recipient} ${sender}``), so its import path is kept lean (HACKING.md).

Exit codes (sysexits, POSTFIX-NOTES): 0 once the report is safely stored;
75 (EX_TEMPFAIL) for anything that stops us before that — configuration
unreadable, store locked, down or full, our own deadline — so Postfix keeps
the bounce and retries. A report that will never parse is NOT a reason to
retry: it is stored as ``unknown``. Nothing is printed on stdout, and what goes
to stderr never starts with a status code (pipe(8) would take a leading
``5.x.x`` as the delivery status and bounce the bounce).
"""

from __future__ import annotations

# Lazy imports: the pipe's lean path (HACKING): a bounce imports only what its case needs (PyYAML
# only for a stale config snapshot); the pipe server imports them once before it forks (warm()).

import os
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING

from .say import say

if TYPE_CHECKING:  # pragma: no cover - typing only: the pipe's import path stays lean
    from ..core.config import Config
    from ..core.tokens import KeyRing

EX_OK = 0
EX_TEMPFAIL = 75


class _Deadline(BaseException):
    """The pipe's deadline: a BaseException, so no ``except Exception`` below can swallow it."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _Deadline()


def parse_argv(argv: list[str]) -> tuple[str, str, str, str | None]:
    """``[--config PATH] [--client-address=ADDR] RECIPIENT [SENDER]`` → (config path,
    recipient, sender, client address).

    The client address is pipe(8)'s ``${client_address}`` (master.cf as ``bouncetrack
    install`` writes it): the SMTP client that handed the report to Postfix, empty
    for mail Postfix made itself (its bounce service) or took from a local
    submission; None when master.cf does not pass it (an older entry).
    """
    from ..core.config import DEFAULT_CONFIG_PATH

    config = os.environ.get("BOUNCETRACK_CONFIG", DEFAULT_CONFIG_PATH)
    client_address: str | None = None
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":  # the rest are addresses, even one that starts with "--config=" (the LMTP listener)
            rest.extend(args)
            break
        if arg == "--config":
            config = next(args, config)
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--client-address="):
            client_address = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if not rest:
        raise ValueError("usage: bouncetrack pipe [--config FILE] RECIPIENT [SENDER]")
    return config, rest[0], rest[1] if len(rest) > 1 else "", client_address


HELP = """\
usage: bouncetrack pipe [--config FILE] [--client-address=ADDR] RECIPIENT [SENDER] < MESSAGE

Store one bounce report read from stdin: what Postfix's pipe(8) runs for mail to the
bounce domain (master.cf normally starts the pipe client, which hands the bounce to
`bouncetrack pipe-server` and runs this only when no server answers).

  --config FILE   the configuration (default: $BOUNCETRACK_CONFIG, else {default})
  --client-address=ADDR  the SMTP client the report came from (${{client_address}};
                  empty: made by this Postfix); decides which reports may suppress
  RECIPIENT       the bounce address the report was sent to (${{recipient}})
  SENDER          its envelope sender (${{sender}}; MAILER-DAEMON for a DSN)

Exit status (sysexits, read by pipe(8)): 0 stored, 75 not stored and Postfix retries.
Nothing is written on stdout; the pipe's messages go to stderr.
"""


def main(argv: list[str] | None = None, *, raw: bytes | None = None, started: float | None = None,
         fallback: "tuple[Config, KeyRing] | None" = None) -> int:
    """Store one bounce; the exit code for pipe(8).

    ``raw``, ``started`` and ``fallback`` (its last good configuration and keys)
    come from the pipe server (:mod:`.server`), which has read the message from
    its client; by default the message is stdin and the clock starts now. ``-h``/``--help`` prints :data:`HELP` and stores nothing (stdin
    is not read); no address can be those words, so pipe(8) never triggers it.
    """
    args = sys.argv[1:] if argv is None else argv
    if raw is None and any(a in ("-h", "--help") for a in args):
        from ..core.config import DEFAULT_CONFIG_PATH

        sys.stdout.write(HELP.format(default=DEFAULT_CONFIG_PATH))
        return EX_OK
    started = time.time() if started is None else started
    code = _main(argv, started, raw, fallback)
    if code == EX_TEMPFAIL:
        # Metrics (issue 5): a run that failed cannot count itself in the store
        # (often the store is what failed); log it best-effort for /metrics.
        from .tempfail import note_tempfail

        note_tempfail(time.time() - started)
    return code


def _main(argv: list[str] | None, started: float, raw: bytes | None = None,
          fallback: "tuple[Config, KeyRing] | None" = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    # A first deadline before the configuration is read; replaced by the
    # configured one in process(). pipe(8)'s own limit (1000 s) would bounce the bounce.
    signal.alarm(120)
    try:
        try:
            config_path, recipient, sender, client_address = parse_argv(argv)
            if raw is None:
                raw = sys.stdin.buffer.read()
            from .process import process

            return process(config_path, recipient, sender, raw, started, fallback, client_address)
        except _Deadline:
            say("deadline reached before the report was stored; Postfix will retry")
            return EX_TEMPFAIL
        except BaseException as exc:  # noqa: BLE001 - the pipe's top level: every failure is a retry
            if isinstance(exc, SystemExit) and exc.code in (EX_OK, EX_TEMPFAIL):
                return int(exc.code)
            say(f"not stored, Postfix will retry: {type(exc).__name__}: {exc}")
            if os.environ.get("BOUNCETRACK_DEBUG"):
                import traceback  # not on the hot path: it imports tokenize, linecache, textwrap

                traceback.print_exc(file=sys.stderr)
            return EX_TEMPFAIL
        finally:
            signal.alarm(0)
    except _Deadline:
        # The deadline fired inside a handler above (a store error reached at the very
        # moment the time ran out) or just before alarm(0): uncaught, it would be
        # Python's exit 1, and pipe(8) would bounce the bounce. There is one alarm
        # at a time and it is spent now.
        say("deadline reached before the report was stored; Postfix will retry")
        return EX_TEMPFAIL
    finally:
        signal.signal(signal.SIGALRM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
