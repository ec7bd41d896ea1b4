"""The unprivileged system user the pipe and the milter run as (HACKING.md: never root)."""

from __future__ import annotations

import grp
import pwd
import subprocess

DEFAULT_USER = "bouncetrack"


def ensure_user(name: str = DEFAULT_USER) -> tuple[int, int]:
    """Create the system user and its group if missing; return (uid, gid).

    Safe to call from several processes at once: a lost race ("already exists") is
    fine as long as the user exists afterwards.
    """
    try:
        pw = pwd.getpwnam(name)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    proc = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"useradd {name} failed: {proc.stderr.strip()}") from None
    return pw.pw_uid, pw.pw_gid


def gid_of(group: str) -> int:
    return grp.getgrnam(group).gr_gid


def ensure_cache_dir(uid: int, gid: int, path: str = "/var/cache/bouncetrack") -> None:
    """The pipe's config-snapshot directory (bouncetrack.bounce_pipe.config_snapshot): owned by the
    pipe user, writable by no one else. systemd's ``CacheDirectory=`` does this in production."""
    import os

    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, 0o700)
    # As CacheDirectory= also does: what a root run left there (the pipe's tempfail and
    # fallback logs, say) becomes the pipe user's again, or its appends would fail.
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid != uid:
            os.chown(entry.path, uid, gid, follow_symlinks=False)
