"""A kvtest option whose value, an existing path, pytest took for where its rootdir is.

pytest looks for its rootdir and ini file before plugins add their options, so the value of an option
it does not know yet, given after a space (``--kv-results out/nightly.json``), counts as a path to
start from when it exists (pytest-dev/pytest#8846, "a known issue" there). Run again with the same
results file, a run from the project's folder got that file's folder as its rootdir: the project's
``pytest.ini`` was not read (no markers, no ``testpaths``), kvtest's own harness was collected with
the samples, and the roles it started failed. ``--kv-results=out/nightly.json`` is never taken for a
path.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

__all__ = ["rootdir_taken_from"]


def _rootpath_without_them(config: pytest.Config) -> Path | None:
    """The rootdir pytest finds from the command line's own paths alone (its rootdir search, run again
    now that every option is known); None when this pytest's search cannot be called so."""
    try:
        from _pytest.config.findpaths import determine_setup
    except ImportError:
        return None
    given = config.args_source is pytest.Config.ArgsSource.ARGS
    try:
        found = determine_setup(
            inifile=config.option.inifilename,
            override_ini=config.option.override_ini,
            args=[str(a) for a in config.args] if given else [],
            rootdir_cmd_arg=config.option.rootdir or None,
            invocation_dir=config.invocation_params.dir,
        )
    except TypeError:  # another pytest's signature: no second opinion, no complaint
        return None
    return Path(found[0])


def rootdir_taken_from(config: pytest.Config, flags: Iterable[str]) -> tuple[str, str] | None:
    """``(flag, value)`` of an option among ``flags`` given as ``flag value`` whose value is an existing
    path, when pytest's rootdir is not the one the command line's own paths give; None otherwise."""
    args = [str(a) for a in config.invocation_params.args]
    wanted = set(flags)
    suspects = [(flag, value) for flag, value in zip(args, args[1:])
                if flag in wanted and (config.invocation_params.dir / value).exists()]
    if not suspects:
        return None
    own = _rootpath_without_them(config)
    if own is None or own == config.rootpath:
        return None
    return suspects[0]
