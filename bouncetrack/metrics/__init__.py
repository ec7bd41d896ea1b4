"""Prometheus metrics (issue 5).

Kept import-free on purpose: the bounce pipe imports :mod:`.pipe_tempfail`
(stdlib only) and must not pay for prometheus_client (HACKING.md).

- :mod:`.collector`: the API's ``/metrics`` collector, reading counters from
  the store at scrape time (the pipe and the worker are short-lived or
  separate processes; their counts live in the store, so they survive
  restarts by construction).
- :mod:`.milter`: the milter's own metrics port (decisions, recording latency).
- :mod:`.pipe_tempfail`: the pipe's tempfail log (a run that could not reach
  the store cannot count itself there).
- :mod:`.pipe_fallback`: the pipe client's log of bounces it handed to the full
  pipe because the pipe server was not there.
"""
