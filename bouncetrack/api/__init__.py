"""The HTTP service (``bouncetrack api``): download API, send endpoint, dashboard, /metrics."""
