"""Prometheus metrics (issue 5): what ``/metrics`` serves, read at scrape time.

- :mod:`.collector`: the API's ``/metrics`` collector, reading counters from
  the store at scrape time (the pipe and the worker are short-lived or
  separate processes; their counts live in the store, so they survive
  restarts by construction), the pipe's logs and the milter's probe.
- :mod:`.pipe_fallback`: the pipe client's log of bounces it handed to the full
  pipe because the pipe server was not there.

What the pipe and the milter record themselves lives with them (issue 17: the
imports go one way, metrics -> pipe and milter): the pipe's tempfail log is
:mod:`bouncetrack.bounce_pipe.tempfail` (stdlib only, the pipe must not pay for
prometheus_client), the milter's own metrics port :mod:`bouncetrack.milter.metrics`.
"""
