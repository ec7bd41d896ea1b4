"""What every part of bouncetrack shares, and nothing else: the vocabulary (event
types, SMTP replies, ESMTP parameters, addresses), the configuration's typed model
and its loader, the VERP and API tokens, redaction, logging, reload and the DNS
resolver seam. A module here imports only the standard library, its dependencies
and other modules of ``core``: the rest of the tree builds on it.
"""
