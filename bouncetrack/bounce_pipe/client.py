"""The bounce pipe as Postfix starts it: hand the bounce to the warm pipe server.

Postfix's pipe(8) starts a new process per bounce. A Python that imports the
``email`` parser, the classifier and the store takes about 7 times as long as a
bare interpreter start (``bench/pipe.py``), and that start is the pipe's
throughput. This script imports nothing but built-in modules. It passes its
arguments and the message over a unix socket to ``bouncetrack pipe-server``, which
has imported everything once and forks per bounce, and it exits with the
server's exit code. Run it with ``python -S`` (no ``site``: no virtualenv import
hooks)::

    argv=/opt/bouncetrack/venv/bin/python -S …/bouncetrack/bounce_pipe/client.py
         --socket /run/bouncetrack/pipe.sock --config F ${recipient} ${sender}

Every way the server can fail keeps the bounce:

- no server (socket missing or refused): the full pipe runs in this process's place
  (``exec``, stdin untouched);
- the server went away before answering (crash, restart): the full pipe runs with
  the message read so far; it stores the bounce once, since the pipe deduplicates a
  report delivered twice;
- no answer within :data:`DEADLINE`: exit 75, and Postfix retries.

Each hand-over to the full pipe appends a record to ``<cache dir>/pipe-fallback.log``
(:func:`note_fallback`), which ``/metrics`` shows as
``bouncetrack_pipe_fallbacks_total{reason}``: the bounces still get stored, but each
one costs a full start, and an operator should learn that the server is gone.

The arguments after ``--socket PATH`` are those of ``bouncetrack pipe``
(``[--config F] RECIPIENT [SENDER]``), and so is the exit code (0 stored, 75 retry).
Nothing is written on stdout; what the pipe said goes to stderr (pipe(8) logs it).

Wire format (one connection per bounce; the server is :mod:`.server`):
``MAGIC``, the decimal length of the argument block and ``\\n``, the argument
block (the start time, then the pipe's arguments, NUL-separated, file-system
encoded), the message to end of stream (the client shuts down its sending side).
Answer: the exit code in decimal and ``\\n``, then what the pipe wrote to stderr.
"""

# No "from __future__" and no typing import: this file must start in a bare interpreter
# (annotations use built-in types only, evaluated at definition time).
import os
import sys
import time

import _socket

MAGIC = b"BTPIPE1\n"
EX_TEMPFAIL = 75
# How long to wait for the server's answer: well above the pipe's own deadline
# (pipe.deadline_seconds, 60 s by default), far below pipe(8)'s command_time_limit
# (1000 s), and short enough that a stuck server does not hold pipe slots for long.
# A deadline configured above it is cut here: exit 75, and the retry finds the bounce
# stored if the server's child stored it after all.
DEADLINE = 300.0
USAGE = "usage: client.py --socket PATH [--config FILE] RECIPIENT [SENDER]"

# The fallback log (read by bouncetrack.metrics.pipe_fallback): fixed-size records
# "<unix seconds, 10 digits> <reason, padded>\n", one write each on an O_APPEND
# descriptor, so concurrent clients never interleave. In the pipe's cache directory,
# found as the pipe finds it (bouncetrack.bounce_pipe.tempfail).
FALLBACK_LOG = "pipe-fallback.log"
NO_SERVER = "no-server"  # nothing listening on the socket (not started, stopped)
SERVER_LOST = "server-lost"  # it accepted, then went away before answering
# What the pipe server's LMTP listener (bouncetrack.bounce_pipe.lmtp) refused, one record
# each in a log of the same format, counted by /metrics as bouncetrack_lmtp_refused_total:
# a message over pipe.lmtp.max_message_bytes (552: Postfix drops that report, a double
# bounce), a client that timed out (421; Postfix retries its open transaction), protocol
# abuse (an endless line, too many errors).
REFUSED_LOG = "lmtp-refused.log"
TOO_BIG, TIMED_OUT, PROTOCOL = "too-big", "timeout", "protocol"
REFUSALS = (TOO_BIG, TIMED_OUT, PROTOCOL)
REASON_WIDTH = 11
FALLBACK_RECORD_LEN = 10 + 1 + REASON_WIDTH + 1
DEFAULT_CACHE_DIR = "/var/cache/bouncetrack"


def _say(message: str) -> None:
    # Prefixed so it never begins with an enhanced status code (pipe(8) would take it).
    os.write(2, ("bouncetrack pipe: " + message + "\n").encode("utf-8", "replace"))


def _package_root() -> str:
    """The directory holding the ``bouncetrack`` package this file belongs to."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def append_record(path: str, record: bytes) -> None:
    """Append ``record`` with one write on an ``O_APPEND`` descriptor, so the records of
    concurrent writers never interleave; never raises (a log must not cost a bounce).
    The pipe's tempfail log uses it too (bouncetrack.bounce_pipe.tempfail)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, record)
        finally:
            os.close(fd)
    except Exception:  # noqa: BLE001 - best-effort by design
        pass


def cache_dir() -> str:
    """The pipe's cache directory, where the pipe's logs go (the tempfail log's too)."""
    return os.environ.get("BOUNCETRACK_CACHE_DIR", DEFAULT_CACHE_DIR)


def note_fallback(reason: str, log: str = FALLBACK_LOG) -> None:
    """Append one record to the fallback log (best-effort); ``log``: another log of the
    same format in the cache directory (the LMTP listener's refusals, bouncetrack.bounce_pipe.lmtp)."""
    record = "%010d %-*s\n" % (int(time.time()), REASON_WIDTH, reason[:REASON_WIDTH])
    append_record(os.path.join(cache_dir(), log), record.encode())


def run_full_pipe(pipe_args: list[str], message: bytes | None = None, *, reason: str = NO_SERVER) -> None:
    """Become ``python -m bouncetrack.bounce_pipe`` (with ``site``); never returns (exec).

    With ``message``, the full pipe reads it from a pipe fed by a child process,
    since this process has already consumed stdin. ``reason`` goes to the fallback log.
    """
    note_fallback(reason)
    if message is not None:
        read_end, write_end = os.pipe()
        if os.fork() == 0:
            os.close(read_end)
            view = memoryview(message)
            while view:
                view = view[os.write(write_end, view):]
            os._exit(0)
        os.close(write_end)
        os.dup2(read_end, 0)
        os.close(read_end)
    env = dict(os.environ)
    root = _package_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    python = sys.executable
    try:
        os.execve(python, [python, "-m", "bouncetrack.bounce_pipe", *pipe_args], env)
    except OSError as exc:
        _say(f"cannot run the full pipe ({python}): {exc}; Postfix will retry")
        os._exit(EX_TEMPFAIL)


def parse_argv(argv: list[str]) -> tuple[str, list[str]]:
    """``--socket PATH`` and the rest (the pipe's own arguments)."""
    if len(argv) >= 2 and argv[0] == "--socket":
        return argv[1], argv[2:]
    if argv and argv[0].startswith("--socket="):
        return argv[0].split("=", 1)[1], argv[1:]
    raise ValueError(USAGE)


def _read_stdin() -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def request(started: float, pipe_args: list[str], message: bytes) -> bytes:
    """The bytes sent to the server for one bounce."""
    block = b"\0".join([repr(started).encode()] + [os.fsencode(a) for a in pipe_args])
    return MAGIC + str(len(block)).encode() + b"\n" + block + message


def parse_answer(answer: bytes) -> tuple[int, bytes] | None:
    """(exit code, stderr text) from the server's answer; None when it is incomplete."""
    line, newline, text = answer.partition(b"\n")
    if not newline or not line.isdigit():
        return None
    return int(line), text


def main(argv: list[str]) -> int:
    started = time.time()
    try:
        socket_path, pipe_args = parse_argv(argv)
    except ValueError as exc:
        _say(str(exc))
        return EX_TEMPFAIL
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError:
        sock.close()
        run_full_pipe(pipe_args)  # no server: the full pipe, on the untouched stdin
        return EX_TEMPFAIL  # not reached: run_full_pipe execs
    message = _read_stdin()
    sock.settimeout(DEADLINE)
    try:
        sock.sendall(request(started, pipe_args, message))
        sock.shutdown(_socket.SHUT_WR)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        _say("no answer from the pipe server before the deadline; Postfix will retry")
        return EX_TEMPFAIL
    except OSError:
        chunks = []  # reset, broken pipe: the server went away; see below
    finally:
        sock.close()
    answer = parse_answer(b"".join(chunks))
    if answer is None:
        run_full_pipe(pipe_args, message, reason=SERVER_LOST)  # it went away before answering
        return EX_TEMPFAIL  # not reached: run_full_pipe execs
    code, text = answer
    if text:
        os.write(2, text)
    return code


def run() -> int:
    """:func:`main`, with any failure of ours turned into 75: Python's own 1 would make
    pipe(8) bounce the bounce, and a bounced bounce is lost."""
    try:
        return main(sys.argv[1:])
    except BaseException as exc:  # noqa: BLE001 - the client's top level
        if isinstance(exc, SystemExit) and exc.code in (0, EX_TEMPFAIL):
            return int(exc.code)
        _say(f"pipe client failed, Postfix will retry: {type(exc).__name__}: {exc}")
        return EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(run())
