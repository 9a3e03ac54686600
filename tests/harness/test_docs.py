"""The documentation: the README stays short and keeps CI's two commands; the options and known-issues
pages are generated from kvtest's own tables (never written twice); the site builds strictly and a
broken link fails it; the worked example of "Write a multi-role test" runs."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from loading import load_file

from kvtest.results.known_issues import KNOWN_ISSUES, LIMITS
from kvtest.settings import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CI_COMMANDS = (
    "pip install torch==2.13.0 && pip install -e '.[sim]' && pytest",
    "pip install torch==2.13.0 && pip install -e '.[dev]' && pytest tests/harness -n 2",
)
OPTION_ROW = re.compile(r"^\| `(--[a-z-]+)[^`]*` \| `(KVTEST_[A-Z_]+)` / `(kv_[a-z_]+)` \|", re.M)


def _hooks():
    return load_file(DOCS / "hooks.py", "kvtest_docs_hooks")


def test_readme_is_short_and_keeps_cis_two_commands():
    text = README.read_text()
    assert len(text.encode()) < 5 * 1024, f"README.md is {len(text.encode())} bytes (limit 5 KB): move it to docs/"
    lines = [line.strip() for line in text.splitlines()]
    for command in CI_COMMANDS:
        assert command in lines, f"README.md lost CI's command {command!r}"
    assert "pytest --role p --rendezvous tcp://HOST_A:29500 --device-id 0" in lines
    assert "pytest --role d --rendezvous tcp://HOST_A:29500 --device-id 0" in lines


def test_readme_links_point_at_pages_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    assert links and [link for link in links if not (ROOT / link).is_file()] == []


def hand_written_option_rows(markdown: str) -> list[str]:
    return [m.group(1) for m in OPTION_ROW.finditer(markdown)]


def test_the_options_page_is_generated_from_options():
    hooks = _hooks()
    source = (DOCS / "reference" / "options.md").read_text()
    assert hooks.OPTIONS_MARKER in source
    assert hand_written_option_rows(source) == [], "docs/reference/options.md writes option rows by hand"
    rendered = hooks.render(source)
    rows = {m.group(1): (m.group(2), m.group(3)) for m in OPTION_ROW.finditer(rendered)}
    assert rows == {o.flag: (o.env, o.ini) for o in OPTIONS}
    for o in OPTIONS:
        assert o.help.replace("|", "\\|") in rendered, o.flag


def test_a_hand_written_option_row_is_found():
    row = "| `--kv-seed N` | `KVTEST_SEED` / `kv_seed` | 20260801 | seed |\n"
    assert hand_written_option_rows("# Options\n\n" + row) == ["--kv-seed"]


def test_no_other_page_writes_the_option_table():
    pages = [p for p in DOCS.rglob("*.md")] + [README]
    offenders = {str(p.relative_to(ROOT)): rows for p in pages if (rows := hand_written_option_rows(p.read_text()))}
    assert offenders == {}


def test_the_known_issues_page_is_the_registry():
    hooks = _hooks()
    rendered = hooks.render((DOCS / "reference" / "known-issues.md").read_text())
    for entry in [*KNOWN_ISSUES.values(), *LIMITS.values()]:
        assert f"| `{entry.id}` |" in rendered and entry.source in rendered, entry.id


def _mkdocs(site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"})


needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                                  reason="mkdocs with Material is not installed: pip install -e '.[docs]' (.ci/docs does)")


@needs_mkdocs
@pytest.mark.full
def test_the_site_builds_strictly_and_a_broken_link_fails_it(tmp_path):
    done = _mkdocs(tmp_path / "site", ROOT)
    assert done.returncode == 0, done.stderr
    options = (tmp_path / "site" / "reference" / "options" / "index.html").read_text()
    assert all(o.env in options for o in OPTIONS)
    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs")
    for name in ("mkdocs.yml", "CHANGELOG.md", "CONTRIBUTING.md"):  # the pages include the last two
        shutil.copy(ROOT / name, copy)
    page = copy / "docs" / "how-to" / "xpyd.md"
    page.write_text(page.read_text() + "\nSee [the launchers](launchers.md#no-such-anchor).\n")
    broken = _mkdocs(tmp_path / "site2", copy)
    assert broken.returncode != 0 and "no-such-anchor" in broken.stderr, broken.stderr


def _example_files() -> dict[str, str]:
    text = (DOCS / "how-to" / "write-a-test.md").read_text()
    return dict(re.findall(r'```python title="([^"]+)"\n(.*?)```', text, flags=re.S))


def test_the_worked_example_runs_and_its_check_can_fail(tmp_path):
    files = _example_files()
    assert set(files) == {"conftest.py", "test_my_pull.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KVTEST_SIM_FAULT", None)

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--kv-logs",
                               str(tmp_path / "logs")], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                              env={**env, **extra})

    ok = run({})
    assert ok.returncode == 0 and "1 passed" in ok.stdout, ok.stdout + ok.stderr
    flipped = run({"KVTEST_SIM_FAULT": "flip@pull_blocks:d0"})
    assert flipped.returncode == 1 and "d's cache after pull_blocks" in flipped.stdout, flipped.stdout
