"""The operator's tools around the running services: wiring bouncetrack into
Postfix (``install``, ``postfix_wiring``), the SQLite backup, retention and its
``purge`` command, and ``forget`` for privacy requests. They sit beside the worker
and the API: they may import ``core``, the classifier, the store and its policies.
"""
