"""pipe(8) wrapper for the fault suite: run the real pipe, SIGKILL it at a random point.

Staged next to ``bt.py`` by ``Stack(pipe_wrapper=...)``; Postfix runs::

    PYTHON killpipe.py RATE MAX_DELAY LOG -- PYTHON bt.py pipe --config F ${recipient} ${sender}

For a ``RATE`` fraction of runs it picks a delay in ``[0, MAX_DELAY]`` seconds. If the
pipe is still running then, it is SIGKILLed (mid-parse, mid-classify, or inside its
SQLite transaction); if it already finished (its transaction committed), the wrapper
dies anyway before Postfix sees the exit status: the bounce is retried although it
is stored. Either way the wrapper ends with SIGKILL itself, so Postfix sees a signal
death and defers the bounce (pipe_command.c). Each decision is appended to ``LOG``.
Standard library only; the message reaches the pipe on the inherited stdin.
"""

import os
import random
import signal
import subprocess
import sys
import time

sep = sys.argv.index("--")
rate, max_delay, log = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
cmd = sys.argv[sep + 1:]
rng = random.Random(os.urandom(8))
started = time.monotonic()
child = subprocess.Popen(cmd)
if rng.random() < rate:
    delay = rng.uniform(0, max_delay)
    try:
        code = child.wait(delay)
        what = f"after-exit-{code}"
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        what = "killed-running"
    with open(log, "a") as f:
        f.write(f"{what} {delay:.3f} {cmd[-2] if len(cmd) >= 2 else '?'}\n")
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(child.wait())
