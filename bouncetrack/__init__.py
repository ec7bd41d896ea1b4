"""bouncetrack: bounce and complaint tracking for an existing Postfix.

Kept empty on purpose: the bounce pipe imports this package once per bounce, so
nothing heavy may load here.
"""

__version__ = "0.1.0"
