"""Which clinvert made a result: the package version and, in a git checkout, the commit."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@lru_cache(maxsize=1)
def version() -> str:
    """The installed clinvert version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("clinvert")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout clinvert's code lives in, with ``+dirty`` for uncommitted
    changes to tracked files; None for an installed package outside a checkout or without git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", str(here)],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance() -> dict[str, str | None]:
    """``{"clinvert": version, "git_commit": commit or None}`` for result files."""
    return {"clinvert": version(), "git_commit": git_commit()}
