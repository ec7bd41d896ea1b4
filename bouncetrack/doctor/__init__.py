"""``bouncetrack doctor``: is this host wired and published correctly?

:mod:`.checks` pure verdicts, :mod:`.dnscheck` DNS behind one resolver seam,
:mod:`.cli` the probes and the click command (``bouncetrack.doctor.cli:doctor_command``).
"""
