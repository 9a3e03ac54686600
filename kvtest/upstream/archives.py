"""The pinned upstream archives: names, sha256, what each is, and the cache key they make."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from kvtest.upstream.errors import UpstreamError

__all__ = ["DEFAULT_SOURCES", "ENV_SOURCES", "PINNED", "Archive", "Sources", "locate"]

#: the variable that names another folder of archives (``--sources DIR`` does too)
ENV_SOURCES = "KVTEST_UPSTREAM_SOURCES"


def _default_sources() -> Path:
    """``shared/upstream`` beside the checkout (where the project's machines and CI lay it), else
    /work/shared/upstream; the first that exists, the first when none does (the error then names it)."""
    candidates = (Path(__file__).resolve().parents[3] / "shared" / "upstream", Path("/work/shared/upstream"))
    return next((folder for folder in candidates if folder.is_dir()), candidates[0])


DEFAULT_SOURCES = _default_sources()


@dataclass(frozen=True)
class Archive:
    """One pinned archive: its file name, sha256, top folder inside and where it comes from."""

    name: str
    sha256: str
    top: str
    origin: str


PINNED: tuple[Archive, ...] = (
    Archive(
        "hixl-9ed283b.tar.gz",
        "e827f18f5895749da5d256d1649f2a69395eb5cf100c527d2e6a3c0dadea48eb",
        "hixl",
        "hicann/hixl @ 9ed283b27309463ed0faa490b79c0dc9ddef6377",
    ),
    Archive(
        "cann-cmake-master-044.tar.gz",
        "1664640fc8e1305b05cf8f79c3774450018e22103ec78b6a136a3d54109185a9",
        "cann-cmake",
        "hicann/cmake @ master-044",
    ),
    Archive(
        "runtime-681ef7610-headers.tar.gz",
        "b2aa70f747171519061e9bf3d97be347e528dfb9f1556b94833287443336d390",
        "runtime",
        "hicann/runtime @ 681ef7610df13c8128982901142a2c869ddbb53e (headers)",
    ),
    Archive(
        "metadef-786891c-inc.tar.gz",
        "0dfd7d1cc4a0cd27a19f030d33f6ff0393da15c09a755382bb76193945853e95",
        "metadef",
        "hicann/metadef @ 786891c02e5a7f509c6ffffd854e33ddefe3527c (inc/)",
    ),
    Archive(
        "libboundscheck-43f3940.tar.gz",
        "e73161d5f8240a7d1bf3424536ce59aa83c2ddbebaad33ddaac2c427bac9ce3e",
        "libboundscheck",
        "openeuler-mirror/libboundscheck @ 43f394077b34f894aa1e650467426c34378fb460",
    ),
)


@dataclass(frozen=True)
class Sources:
    """The verified archives in one folder and the cache key they make."""

    folder: Path
    paths: dict[str, Path]
    key: str

    def path(self, top: str) -> Path:
        """The archive whose top folder is ``top`` (``hixl``, ``runtime``, ...)."""
        return self.paths[top]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate(folder: Path, recipe: str) -> Sources:
    """Check that ``folder`` holds every pinned archive with its pinned sha256.

    ``recipe`` is a version of our own build steps, folded into the key (with the interpreter's ABI tag)
    so a change of recipe or of Python never reuses a cache built for another.
    """
    if not folder.is_dir():
        raise UpstreamError(
            f"upstream sources folder {folder} does not exist; "
            "pass --sources DIR holding the pinned archives "
            f"({', '.join(a.name for a in PINNED)})"
        )
    paths: dict[str, Path] = {}
    # the wrappers are CPython extension modules: one build per interpreter ABI
    lines = [f"recipe {recipe}", f"abi {sys.implementation.cache_tag}"]
    for archive in PINNED:
        path = folder / archive.name
        if not path.is_file():
            raise UpstreamError(
                f"{path} is missing ({archive.origin}); pass --sources DIR holding the pinned archives"
            )
        found = _sha256(path)
        if found != archive.sha256:
            raise UpstreamError(
                f"{path} has sha256 {found[:16]}..., not the pinned {archive.sha256[:16]}... "
                f"of {archive.origin}; "
                "it is another commit or a damaged copy: pass --sources DIR holding the pinned archive"
            )
        paths[archive.top] = path
        lines.append(f"{archive.name} {found}")
    key = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return Sources(folder, paths, key)
