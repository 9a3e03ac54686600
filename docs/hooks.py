"""MkDocs hooks: the pages generated from kvtest's own tables at build time, so they are never
written twice. A page holds a marker comment and the hook puts the table in its place:

- ``<!-- kvtest:options -->``: every option of :data:`kvtest.settings.OPTIONS` (flag, environment
  variable, ini key, default, help);
- ``<!-- kvtest:known-issues -->``: :data:`kvtest.results.known_issues.KNOWN_ISSUES` and ``LIMITS``.

``tests/harness/test_docs.py`` checks both (and that no page writes the option table by hand).
"""

from __future__ import annotations

from typing import Any

OPTIONS_MARKER = "<!-- kvtest:options -->"
KNOWN_ISSUES_MARKER = "<!-- kvtest:known-issues -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def options_table() -> str:
    from kvtest.settings import OPTIONS

    rows = ["| Option | Env / ini | Default | Meaning |", "|---|---|---|---|"]
    for o in OPTIONS:
        flag = o.flag if o.switch else f"{o.flag} {o.metavar}"
        default = "off" if o.switch and not o.default else "unset" if o.default is None else o.default
        rows.append(f"| `{_cell(flag)}` | `{o.env}` / `{o.ini}` | `{_cell(default)}` | {_cell(o.help)} |")
    return "\n".join(rows)


def known_issues_table() -> str:
    from kvtest.results.known_issues import KNOWN_ISSUES, LIMITS

    out = ["### Known issues", "", "| Id | What is wrong | Source (hicann/hixl) | Backends | Affected | Fixed in |",
           "|---|---|---|---|---|---|"]
    for i in KNOWN_ISSUES.values():
        out.append(f"| `{i.id}` | {_cell(i.summary)} | `{_cell(i.source)}` | {', '.join(sorted(i.backends))} "
                   f"| {_cell(i.affected)} | {i.fixed_in or 'not yet'} |")
    out += ["", "### Documented limits", "", "| Id | What the API does not support | Source | Backends | "
            "Supported from |", "|---|---|---|---|---|"]
    for lim in LIMITS.values():
        out.append(f"| `{lim.id}` | {_cell(lim.summary)} | `{_cell(lim.source)}` | "
                   f"{', '.join(sorted(lim.backends))} | {lim.supported_from or 'not yet'} |")
    return "\n".join(out)


def render(markdown: str) -> str:
    """``markdown`` with every marker replaced by its generated table."""
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, options_table())
    if KNOWN_ISSUES_MARKER in markdown:
        markdown = markdown.replace(KNOWN_ISSUES_MARKER, known_issues_table())
    return markdown


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return render(markdown)
