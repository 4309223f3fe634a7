"""Provenance: where a plan, a data file or a measurement came from (torch-free, standard library).

* :func:`sha256_file` — the file hash of lock sources, data-file manifests and report files;
* :func:`lock_record` — the ``dcr.lock`` a producer records: the lock file it ran under;
* :func:`git_state` — the git facts of a path: HEAD commit, path in the work tree, committed, dirty;
* :func:`versions` / :func:`tool_version` — installed distribution versions;
* :func:`environment` — the torch-free part of a measurement's ``dcr.environment``; producers add
  the GPU, CUDA, torch and triton (``producers.runner.measurement_environment``).
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

TOOL_NAME = "dcr-prereg"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lock_record(lock_path: str | Path) -> dict[str, str]:
    """``{"file": name, "file_sha256": hex}`` of the lock file a producer runs under."""
    return {"file": Path(lock_path).name, "file_sha256": sha256_file(lock_path)}


def git_state(path: str | Path) -> dict[str, Any] | None:
    """Git facts of ``path`` (a file or a folder); None outside a git work tree or without git.

    * ``commit`` — HEAD of the work tree (None before its first commit);
    * ``path`` — ``path`` relative to the work tree's root;
    * ``committed`` — ``path`` is tracked and unchanged from HEAD;
    * ``dirty`` — the work tree has uncommitted changes or untracked files.
    """
    p = Path(path).resolve()
    folder, name = (p, ".") if p.is_dir() else (p.parent, p.name)

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=20, check=False)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        commit = head.stdout.strip() if head.returncode == 0 else None
        tracked = git("ls-files", "--error-unmatch", "--", name).returncode == 0
        unchanged = commit is not None and git("diff", "--quiet", "HEAD", "--", name).returncode == 0
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "path": os.path.relpath(p, Path(top.stdout.strip()).resolve()),
            "committed": bool(commit and tracked and unchanged),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def versions(*dists: str) -> dict[str, str | None]:
    """{distribution name: installed version, or None when it is not installed}."""
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def tool_version() -> str:
    """The installed version of this tool (``dcr-prereg``)."""
    return versions(TOOL_NAME)[TOOL_NAME] or "unknown (not installed)"


def environment() -> dict[str, Any]:
    """Python, platform, transformers / numpy / pyarrow versions, and the git commit and dirty flag
    of the work tree this code runs from (None when it is not run from one)."""
    git = git_state(Path(__file__).parent)
    return {"python": platform.python_version(), "platform": platform.platform(),
            **versions("transformers", "numpy", "pyarrow"),
            "git_commit": git and git["commit"], "git_dirty": git and git["dirty"]}
