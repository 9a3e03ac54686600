"""``kvtest upstream build|path|test``: build the real llm_datadist, say where it is, test it."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kvtest.upstream import archives, transport
from kvtest.upstream.build import RECIPE, build
from kvtest.upstream.cache import Entry, cache_root
from kvtest.upstream.errors import UpstreamError
from kvtest.upstream.selfcheck import run_upstream_tests

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "cached_entry", "run"]

HELP = "build the real llm_datadist (hicann/hixl) on CPU against its unit-test stubs, into a cache"
DESCRIPTION = (
    HELP + ". `build` prints the folder to put on PYTHONPATH (after its self-check, hixl's own Python unit "
    "tests); `path` prints it for an existing build; `test` reruns the self-check. The cache is "
    "$KVTEST_UPSTREAM_CACHE or ~/.cache/kvtest/upstream, keyed by the archives' sha256."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("build", "path", "test"))
    parser.add_argument(
        "--sources",
        type=Path,
        default=None,
        help=f"folder of the pinned archives (default ${archives.ENV_SOURCES} or {archives.DEFAULT_SOURCES})",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs (default: all cores)"
    )
    parser.add_argument(
        "--no-check", action="store_true", help="build: skip the self-check (upstream unit tests)"
    )
    parser.add_argument(
        "--what",
        choices=("python", "folder", "transport"),
        default="python",
        help="path: print the python folder (default), the key folder or our transport library",
    )


def _sources_folder(given: Path | None) -> Path:
    if given is not None:
        return given
    return Path(os.environ.get(archives.ENV_SOURCES) or archives.DEFAULT_SOURCES)


def cached_entry(sources: Path | None = None) -> Entry:
    """The finished build for the archives in ``sources`` (default as ``build``), or an UpstreamError."""
    located = archives.locate(_sources_folder(sources), RECIPE)
    return Entry(cache_root() / located.key).require()


def _say(text: str) -> None:
    print(f"kvtest upstream: {text}", file=sys.stderr, flush=True)


def _self_check(entry: Entry) -> int:
    started = time.monotonic()
    outcome = run_upstream_tests(entry, entry.folder / "logs" / "upstream-unittests.log")
    seconds = time.monotonic() - started
    verdict = "passed" if outcome.ok else "FAILED"
    _say(
        f"self-check {verdict}: hixl tests/python, {outcome.ran} tests ({outcome.failed} failed or errors, "
        f"{outcome.skipped} skipped) in {len(outcome.modules)} modules, {seconds:.0f} s; log {outcome.log}"
    )
    return 0 if outcome.ok else 1


def run(args: argparse.Namespace) -> int:
    try:
        if args.jobs < 1:
            raise UpstreamError(f"--jobs {args.jobs} must be at least 1")
        if args.action == "build":
            started = time.monotonic()
            sources = archives.locate(_sources_folder(args.sources), RECIPE)
            entry = build(sources, cache_root(), args.jobs, _say)
            library = transport.ensure(entry, _say)
            _say(f"ready in {time.monotonic() - started:.1f} s: {entry.folder} (transport {library.name})")
            status = 0 if args.no_check else _self_check(entry)
            print(entry.python)
            return status
        entry = cached_entry(args.sources)
        if args.action == "test":
            return _self_check(entry)
        if args.what == "transport":
            print(transport.ensure(entry, _say))
        else:
            print(entry.python if args.what == "python" else entry.folder)
        return 0
    except UpstreamError as exc:
        print(f"kvtest upstream: error: {exc}", file=sys.stderr)
        return 2
