"""Where built packages live: ``${KVTEST_UPSTREAM_CACHE:-~/.cache/kvtest/upstream}/<key>/``.

A key folder appears only by an atomic rename of a finished build whose ``READY`` marker was written
last, so a folder without ``READY`` (or whose ``READY`` lists files that are gone) is never trusted.
Layout (stable; the differential suite of issue 22 reads it):

- ``python/``: put it on ``PYTHONPATH``; ``python/llm_datadist/`` is the unmodified package with the
  built ``llm_datadist_wrapper.so`` and ``metadef_wrapper.so`` beside its modules.
- ``lib/``: the stub libraries the wrappers load (``libllm_datadist_base.so``, ``libascendcl_stub.so``...).
- ``hixl/``: the extracted hixl sources (``tests/python`` is the upstream unit-test suite).
- ``ascend/``: the fake CANN install it was built against (headers for our transport).
- ``transport/<hash>/libkvtest_hccl.so``: our HCCL transport, rebuilt when its source changes.
- ``logs/``: configure and make logs.  ``READY``: JSON written last.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kvtest.upstream.errors import UpstreamError

__all__ = ["ENV_CACHE", "Entry", "cache_root"]

ENV_CACHE = "KVTEST_UPSTREAM_CACHE"
READY = "READY"


def cache_root() -> Path:
    """The cache folder: ``$KVTEST_UPSTREAM_CACHE`` or ``~/.cache/kvtest/upstream``."""
    configured = os.environ.get(ENV_CACHE)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "kvtest" / "upstream"


@dataclass(frozen=True)
class Entry:
    """One key's folder in the cache."""

    folder: Path

    @property
    def python(self) -> Path:
        return self.folder / "python"

    @property
    def lib(self) -> Path:
        return self.folder / "lib"

    @property
    def hixl(self) -> Path:
        return self.folder / "hixl"

    @property
    def ascend(self) -> Path:
        return self.folder / "ascend"

    @property
    def ready_file(self) -> Path:
        return self.folder / READY

    def problem(self) -> str | None:
        """Why this folder cannot be trusted, or ``None`` when it is a finished build."""
        if not self.folder.exists():
            return "not built"
        if not self.ready_file.is_file():
            return f"{self.folder} has no {READY} marker (an interrupted or foreign build)"
        try:
            marker = json.loads(self.ready_file.read_text())
            files = [str(f) for f in marker["files"]]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{self.ready_file} is unreadable"
        missing = [f for f in files if not (self.folder / f).exists()]
        if missing:
            return f"{self.folder} lacks {missing[0]} listed in {READY} (a damaged cache)"
        return None

    def require(self) -> Entry:
        """This entry, or an :class:`UpstreamError` saying how to (re)build it."""
        problem = self.problem()
        if problem is not None:
            raise UpstreamError(f"no usable upstream build: {problem}; run `kvtest upstream build`")
        return self

    def write_ready(self, files: list[str], info: dict[str, object]) -> None:
        """Write the marker; the caller does this last, before the rename into place."""
        payload = {"files": files, **info}
        self.ready_file.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
