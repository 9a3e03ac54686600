"""``kvtest upstream``'s bad input: one line naming what is wrong and the fix, exit 2, no traceback,
and never a cache that a later run trusts. None of these compile anything."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from kvtest.upstream import archives, cli
from kvtest.upstream.build import RECIPE, check_tools
from kvtest.upstream.cache import Entry
from kvtest.upstream.errors import UpstreamError

pytestmark = pytest.mark.skipif(
    not archives.DEFAULT_SOURCES.is_dir(), reason=f"the pinned archives are not in {archives.DEFAULT_SOURCES}"
)


def kvtest_upstream(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``kvtest upstream ARGS`` in this process; its one-line error (exit 2, no traceback)."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(list(args))) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvtest upstream: error: "), err
    return lines[0]


def copy_sources(tmp_path: Path) -> Path:
    folder = tmp_path / "sources"
    folder.mkdir()
    for archive in archives.PINNED:
        (folder / archive.name).symlink_to(archives.DEFAULT_SOURCES / archive.name)
    return folder


def test_a_missing_archive_is_named_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_sources(tmp_path)
    (folder / "hixl-9ed283b.tar.gz").unlink()
    line = kvtest_upstream(capsys, "build", "--sources", str(folder))
    assert f"{folder}/hixl-9ed283b.tar.gz is missing" in line and "pass --sources DIR" in line


def test_an_archive_of_another_commit_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_sources(tmp_path)
    (folder / "runtime-681ef7610-headers.tar.gz").unlink()
    shutil.copy(
        archives.DEFAULT_SOURCES / "metadef-786891c-inc.tar.gz", folder / "runtime-681ef7610-headers.tar.gz"
    )
    line = kvtest_upstream(capsys, "build", "--sources", str(folder))
    assert "runtime-681ef7610-headers.tar.gz has sha256" in line and "681ef7610df13c81" in line


def test_a_missing_sources_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = kvtest_upstream(capsys, "path", "--sources", str(tmp_path / "nowhere"))
    assert "nowhere does not exist" in line


def test_a_missing_compiler_or_cmake_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UpstreamError, match=r"^cmake is not on PATH; install it \(apt-get install cmake\)$"):
        check_tools()


@pytest.mark.parametrize("damage", ["no READY", "READY lists a missing file", "unreadable READY"])
def test_a_half_or_damaged_cache_is_never_trusted(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = archives.locate(archives.DEFAULT_SOURCES, RECIPE)
    folder = tmp_path / "cache" / sources.key
    (folder / "python").mkdir(parents=True)
    if damage != "no READY":
        files = ["python", "lib/libllm_datadist_base.so"]
        text = "{" if damage == "unreadable READY" else json.dumps({"files": files})
        (folder / "READY").write_text(text)
    assert Entry(folder).problem() is not None
    monkeypatch.setenv("KVTEST_UPSTREAM_CACHE", str(tmp_path / "cache"))
    line = kvtest_upstream(capsys, "path")
    assert "no usable upstream build" in line and "run `kvtest upstream build`" in line


def test_a_finished_cache_is_trusted(tmp_path: Path) -> None:
    (tmp_path / "python").mkdir()
    Entry(tmp_path).write_ready(["python"], {"key": "k"})
    assert Entry(tmp_path).problem() is None
