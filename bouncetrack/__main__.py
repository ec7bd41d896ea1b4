"""``python -m bouncetrack``: the same as the ``bouncetrack`` command."""

from bouncetrack.cli import main

main()
