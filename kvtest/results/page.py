"""``kvtest report RESULTS_OR_FOLDER... -o report.html``: results as one self-contained HTML page.

The page opens offline: its CSS, its few lines of script and its charts (inline SVG drawn here, see
:mod:`kvtest.results.svg`) are all in the file, and its Content-Security-Policy forbids fetching
anything. For the newest run it shows every test and role: outcome, failure text and class
(environment or product), bytes, GB/s or latency, and the harness cost. Given several runs (nights)
it adds each API's bandwidth over the nights with the stack changes (CANN, driver, ...) marked, the
gate's decision for every night and the known issues that came or went.

The gate's decisions are :func:`kvtest.results.compare.compare_results`, replayed as the nightly
workflow (``examples/ci/ascend-nightly.yml``) takes them: each night is compared with the newest
``--history`` accepted nights before it, and a night is accepted when none of its tests failed and the
gate found neither a regression nor an environment failure. The first clean night is the first
baseline. ``kvtest report`` exits 0 whatever the results say (it is a viewer; ``kvtest compare`` is
the gate), 2 on an unusable file or option.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from kvtest.results import compare
from kvtest.results.compare import DROP, ENVIRONMENT, IMPORTANT_KEYS, Row, compare_results
from kvtest.results.known_issues import issue_changes
from kvtest.results.report import api_text, cost_text, format_bytes
from kvtest.results.results import Results, ResultsError, TestEntry, load_results, write_atomically
from kvtest.results.svg import Bar, Marker, bar_chart, line_chart

__all__ = ["HELP", "Night", "add_arguments", "build_page", "load_runs", "nights", "run"]

HELP = ("Write --kv-results files (or folders of them: every *.json) as one self-contained HTML page "
        "that opens offline: the newest run's tests and roles with failure text and class, bytes, "
        "GB/s, latency and harness cost; over several runs each API's GB/s night by night with "
        "CANN/driver changes marked, the gate's decision for each night (kvtest compare's rule) and "
        "the known issues that came or went. Exit 0, or 2 on an unusable file or option.")

#: the fingerprint keys whose change is drawn on the bandwidth charts
STACK_KEYS = tuple(k for k in IMPORTANT_KEYS if k != "backend")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", metavar="RESULTS_OR_FOLDER", nargs="+",
                        help="results files, or folders whose *.json files are results files")
    parser.add_argument("-o", "--output", metavar="FILE.html", default="kvtest-report.html",
                        help="the page to write (default: %(default)s)")
    parser.add_argument("--max-drop", default="10%", metavar="PCT",
                        help="the gate's largest allowed GB/s drop, as kvtest compare (default: %(default)s)")
    parser.add_argument("--alpha", default=str(compare.DEFAULT_ALPHA), metavar="P",
                        help="the gate's significance level, as kvtest compare (default: %(default)s)")
    parser.add_argument("--history", default=str(compare.DEFAULT_HISTORY), metavar="N",
                        help="accepted nights each night is compared with (default: %(default)s)")
    parser.add_argument("--title", default="kvtest report", help="the page's title")


def load_runs(paths: Sequence[str | Path]) -> list[Results]:
    """Every results file named or found (``*.json``) in a named folder, oldest first, each once.

    :raises ResultsError: an unusable file (named), a folder with no ``*.json``.
    """
    seen: dict[Path, Results] = {}
    for raw in paths:
        path = Path(raw)
        files = sorted(p for p in path.glob("*.json") if p.is_file()) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise ResultsError(f"{path}: a folder with no results files (*.json)")
        for f in files:
            if f.resolve() not in seen:
                seen[f.resolve()] = load_results(f)
    return sorted(seen.values(), key=lambda r: (r.created, str(r.path)))


@dataclass
class Night:
    """One run in the history and what the gate said about it."""

    results: Results
    #: ``cann 8.2.RC1 -> 8.3.RC1`` for every stack key that changed since the night before
    changes: list[str]
    #: the comparison rows, None when there was no accepted night to compare with
    rows: list[Row] | None
    accepted: bool
    #: known issues that appeared or went away since the night before
    issues: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows or () if r.regression]

    @property
    def environment(self) -> dict[str, str]:
        """The tests that failed because of the environment, with their cause."""
        return {r.test: r.cause or "" for r in self.rows or () if r.verdict == ENVIRONMENT}

    @property
    def decision(self) -> str:
        if self.rows is None:
            return "first baseline" if self.accepted else "no baseline yet"
        if self.regressions:
            return f"{len(self.regressions)} regression{'s' if len(self.regressions) > 1 else ''}"
        if self.environment:
            return "environment failures only"
        return "no regression"


def _clean(results: Results) -> bool:
    return all(e["outcome"] not in ("failed", "error") for e in results.tests.values())


def nights(runs: Sequence[Results], max_drop: float, alpha: float, history: int) -> list[Night]:
    """The gate replayed over ``runs`` (oldest first), as the nightly workflow runs it."""
    accepted: list[Results] = []
    out: list[Night] = []
    previous: Results | None = None
    for results in runs:
        rows = compare_results(accepted[::-1][:history], results, max_drop, alpha) if accepted else None
        night = Night(results=results, changes=_stack_changes(previous, results), rows=rows,
                      accepted=False,
                      issues=issue_changes(previous.tests, results.tests) if previous else [])
        night.accepted = _clean(results) and not night.regressions and not night.environment
        if night.accepted:
            accepted.append(results)
        out.append(night)
        previous = results
    return out


def _stack_changes(before: Results | None, after: Results) -> list[str]:
    if before is None:
        return []
    b, a = before.fingerprint, after.fingerprint
    return [f"{k} {b.get(k, '(absent)')} -> {a.get(k, '(absent)')}"
            for k in STACK_KEYS if b.get(k) != a.get(k)]


def api_bandwidth(results: Results) -> dict[str, float]:
    """Each API's GB/s over the run's passed tests: all their bytes over all their seconds."""
    totals: dict[str, list[float]] = {}
    for entry in results.tests.values():
        if entry["outcome"] != "passed":
            continue
        for api, s in entry["summary"].items():
            t = totals.setdefault(api, [0.0, 0.0])
            t[0] += s["bytes"]
            t[1] += s["seconds"]
    return {api: b / s / 1e9 for api, (b, s) in sorted(totals.items()) if s > 0}


# -- HTML ----------------------------------------------------------------------------------------

_CSS = """
:root{--ok:#16a34a;--bad:#dc2626;--env:#7c3aed;--skip:#737373;--xf:#d97706;--line:#2563eb;--mut:#6b7280}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#111827;color:#f9fafb;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#d1d5db}nav a{color:#93c5fd;margin-right:14px}
main{padding:8px 24px 40px;max-width:1200px}section{background:#fff;border:1px solid #e5e7eb;
border-radius:8px;padding:12px 16px;margin:14px 0}h2{font-size:17px;margin:4px 0 10px}
h3{font-size:14px;margin:14px 0 4px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:4px 8px;border-bottom:1px solid #f3f4f6}
th{font-weight:600;color:#374151;background:#f9fafb;position:sticky;top:0}
td.num{text-align:right;white-space:nowrap}
td:first-child{min-width:300px;max-width:420px;word-break:break-all}
code,pre{font:12px ui-monospace,monospace}
pre{white-space:pre-wrap;margin:2px 0;max-width:640px}.badge{display:inline-block;padding:0 6px;
border-radius:9px;font-size:12px;font-weight:600;color:#fff;margin:1px 2px 1px 0}
.b-passed{background:var(--ok)}.b-failed,.b-error,.b-regression{background:var(--bad)}
.b-skipped{background:var(--skip)}.b-xfail{background:var(--xf)}.b-environment{background:var(--env)}
.b-product{background:#9f1239}.b-info{background:var(--line)}
tr.failed,tr.error,tr.regression{background:#fef2f2}tr.environment{background:#f5f3ff}
.stats span{margin-right:16px}.mut{color:var(--mut)}.callout{border-left:4px solid var(--bad);
padding:6px 10px;background:#fef2f2;margin:8px 0}.callout.ok{border-color:var(--ok);background:#f0fdf4}
.callout.env{border-color:var(--env);background:#f5f3ff}.tools{margin:6px 0 10px}
.tools input[type=search]{width:320px;padding:3px 6px}.hidden{display:none}
svg.chart{max-width:100%;height:auto;display:block;margin:4px 0 10px}
svg .grid{stroke:#e5e7eb}svg .tick,svg .label{font-size:11px;fill:#4b5563}
svg .series{fill:none;stroke:var(--line);stroke-width:1.8}svg .point{fill:var(--line)}
svg .point.flagged{fill:var(--bad);stroke:#fff;stroke-width:1.5}svg .bar{fill:var(--line)}
svg .bar.failed{fill:var(--bad)}svg .marker line{stroke:var(--env);stroke-dasharray:4 3}
svg .marker text{font-size:10px;fill:var(--env)}svg .cell-passed{fill:var(--ok)}
svg .cell-failed,svg .cell-error{fill:var(--bad)}svg .cell-skipped{fill:#d4d4d4}
svg .cell-xfail{fill:var(--xf)}svg .cell-environment{fill:var(--env)}svg .cell-none{fill:#f3f4f6}
"""

# Filters every table marked data-filter by the search box and the "only problems" switch.
_JS = """
(function(){
  var q=document.getElementById('q'),bad=document.getElementById('bad');
  function apply(){
    var text=q.value.toLowerCase(),only=bad.checked;
    document.querySelectorAll('table[data-filter] tbody tr').forEach(function(tr){
      var show=tr.textContent.toLowerCase().indexOf(text)>=0&&(!only||tr.dataset.problem==='1');
      tr.classList.toggle('hidden',!show);
    });
  }
  q.addEventListener('input',apply);bad.addEventListener('change',apply);
  var h=decodeURIComponent(location.hash.slice(1));if(h.indexOf('q=')===0){q.value=h.slice(2);apply();}
})();
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def _slug(nodeid: str) -> str:
    return "t-" + re.sub(r"[^A-Za-z0-9_-]+", "-", nodeid).strip("-")


def _label(entry: TestEntry) -> str:
    known = entry.get("known_issue")
    return "xfail" if known is not None and known["state"] == "hit" else entry["outcome"]


def _badge(text: str, css: str | None = None) -> str:
    return f'<span class="badge b-{css or text}">{escape(text)}</span>'


def _night_label(results: Results) -> str:
    return results.created[:10]


def _fingerprint_table(results: Results) -> str:
    fp = results.fingerprint
    keys = [*(k for k in IMPORTANT_KEYS if k in fp), *sorted(set(fp) - set(IMPORTANT_KEYS))]
    cells = "".join(f"<tr><th>{escape(k)}</th><td><code>{escape(fp[k])}</code></td></tr>" for k in keys)
    roles = "".join(f"<tr><th>{escape(name)}</th><td>{escape(info['host'])} (pid {info['pid']})</td></tr>"
                    for name, info in results.roles.items())
    diff = "".join(f'<p class="callout env">stack differs between roles: {escape(d)}</p>'
                   for d in results.stack_differences)
    return (f'<details><summary>environment fingerprint and roles</summary><table>{cells}{roles}'
            f"</table></details>{diff}")


def _role_cells(entry: TestEntry) -> str:
    parts = []
    for name, r in entry["roles"].items():
        where = f" at {escape(r['step'])}" if r["step"] else ""
        parts.append(f"<div>{escape(name)} {_badge(r['outcome'])}{where}"
                     f"{'' if r['message'] is None else '<pre>' + escape(r['message']) + '</pre>'}</div>")
    return "".join(parts) or '<span class="mut">no roles</span>'


def _test_row(nodeid: str, entry: TestEntry) -> str:
    label = _label(entry)
    problem = entry["outcome"] in ("failed", "error")
    failure = ""
    if entry["failure"]:
        failure = _badge(entry["failure"]) + (f"<pre>{escape(entry['failure_cause'])}</pre>"
                                              if entry["failure_cause"] else "")
    known = entry.get("known_issue")
    if known is not None:
        failure += f'<div class="mut">known issue {escape(known["id"])} ({escape(known["state"])})</div>'
    summary = entry["summary"]
    moved = format_bytes(sum(s["bytes"] for s in summary.values())) if summary else "-"
    figures = "<br>".join(escape(api_text(api, s)) for api, s in summary.items()) or "-"
    cost = escape(cost_text(entry["cost"])) if summary else f"{entry['cost']['wall_s']:.2f} s"
    css = f"{entry['outcome']} environment" if entry["failure"] == "environment" else entry["outcome"]
    return (f'<tr id="{_slug(nodeid)}" class="{css}" data-problem="{int(problem)}">'
            f"<td><code>{escape(nodeid)}</code></td><td>{_badge(label)}</td><td>{_role_cells(entry)}</td>"
            f'<td>{failure or "-"}</td><td class="num">{moved}</td><td>{figures}</td><td>{cost}</td></tr>')


def _failing_callout(tests: dict[str, TestEntry]) -> str:
    failing = [(n, e) for n, e in tests.items() if e["outcome"] in ("failed", "error")]
    callout = ""
    if failing:
        items = "".join(f'<li><a href="#{_slug(n)}"><code>{escape(n)}</code></a> '
                        f'{_badge(e["failure"] or "product")} {escape(e["failure_cause"] or "")}</li>'
                        for n, e in failing)
        callout = f'<div class="callout" id="failing"><b>{len(failing)} failing</b><ul>{items}</ul></div>'
    elif tests:
        callout = '<div class="callout ok">every test passed, was skipped or hit its known issue</div>'
    return callout


def _run_section(results: Results, heading: str, *, callout: bool = True) -> str:
    tests = results.tests
    counts: dict[str, int] = {}
    for entry in tests.values():
        counts[_label(entry)] = counts.get(_label(entry), 0) + 1
    stats = " ".join(f"<span>{_badge(k)} {n}</span>" for k, n in sorted(counts.items()))
    bars = [Bar(label=api, value=gbps, title=f"{api}: {gbps:.3g} GB/s over the passed tests")
            for api, gbps in api_bandwidth(results).items()]
    chart = bar_chart(bars, unit="GB/s", title=f"GB/s per API, run {results.run_id}")
    rows = "".join(_test_row(n, e) for n, e in tests.items())
    timed = [e["cost"] for e in tests.values() if e["summary"]]
    harness = ""
    if timed:
        inside = sum(c["transfer_s"] for c in timed)
        outside = sum(c["other_s"] for c in timed)
        harness = (f'<p class="mut">harness cost over {len(timed)} tests with transfers: in transfers '
                   f"{inside:.2f} s, outside {outside:.2f} s</p>")
    return (f'<section id="run"><h2>{escape(heading)} <code>{escape(results.run_id)}</code>, '
            f"{escape(results.created)}</h2><p class=\"stats\">{stats}</p>"
            f"{_failing_callout(tests) if callout else ''}"
            f"{_fingerprint_table(results)}{harness}"
            f"<h3>GB/s per API (bytes over seconds across the passed tests)</h3>{chart}"
            f"<h3>Every test and role</h3>"
            f'<table data-filter id="tests"><thead><tr><th>test</th><th>outcome</th><th>roles</th>'
            f"<th>failure</th><th>bytes</th><th>GB/s or latency</th><th>harness cost</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


def _charts_section(history: Sequence[Night]) -> str:
    labels = [_night_label(n.results) for n in history]
    per_night = [api_bandwidth(n.results) for n in history]
    apis = sorted({api for bw in per_night for api in bw})
    markers = [Marker(i, ", ".join(c.split(" -> ")[0].split(" ")[0] + " " + c.split(" -> ")[1]
                                   for c in n.changes), "; ".join(n.changes))
               for i, n in enumerate(history) if n.changes]
    charts = []
    for api in apis:
        flagged = [(i, "; ".join(f"{r.verdict} {r.test} ({r.figures})" for r in n.regressions
                                 if r.api == api and r.verdict == DROP))
                   for i, n in enumerate(history)]
        charts.append(f"<h3>{escape(api)}</h3>" + line_chart(
            labels, [bw.get(api) for bw in per_night], unit="GB/s", markers=markers,
            flagged=[f for f in flagged if f[1]], title=f"{api}: GB/s over {len(history)} runs"))
    return (f'<section id="bandwidth"><h2>Bandwidth over {len(history)} runs</h2><p class="mut">Each '
            "API's bytes over seconds across the run's passed tests. Dashed lines: a stack change "
            "(CANN, driver, firmware, ...); red points: a bandwidth regression the gate found.</p>"
            f"{''.join(charts) or '<p>no timed transfers</p>'}</section>")


def _gate_section(history: Sequence[Night], max_drop: float, alpha: float, depth: int) -> str:
    rows = []
    for n in reversed(history):
        css = "regression" if n.regressions else "environment" if n.environment else ""
        badge = _badge(n.decision, "regression" if n.regressions else "environment" if n.environment
                       else "passed" if n.rows is not None or n.accepted else "info")
        lines = [f'<div>{_badge(r.verdict, "regression")} <code>{escape(r.label)}</code> '
                 f"{escape(r.figures)}</div>" for r in n.regressions]
        lines += [f"<div>{_badge('environment')} <code>{escape(t)}</code>: {escape(cause)}</div>"
                  for t, cause in n.environment.items()]
        details = "".join(lines[:3]) + (f"<details><summary>{len(lines) - 3} more</summary>"
                                        f"{''.join(lines[3:])}</details>" if len(lines) > 3 else "")
        rows.append(
            f'<tr class="{css}" data-problem="{int(bool(n.regressions))}">'
            f"<td>{escape(n.results.created)}</td>"
            f"<td><code>{escape(n.results.run_id)}</code></td>"
            f"<td>{escape('; '.join(n.changes)) or '-'}</td><td>{badge}"
            f"{'' if not n.accepted else ' <span class=mut>accepted</span>'}</td><td>{details or '-'}</td>"
            f"<td>{'<br>'.join(escape(i) for i in n.issues) or '-'}</td></tr>")
    return (f'<section id="gate"><h2>The gate, night by night</h2><p class="mut">kvtest compare against '
            f"the newest {depth} accepted nights before each (max drop {max_drop * 100:g}%, alpha "
            f"{alpha:g}); a night is accepted when no test failed and the gate found no regression "
            "and no environment failure, as the nightly workflow does.</p>"
            '<table data-filter id="nights"><thead><tr><th>created</th><th>run</th><th>stack change</th>'
            "<th>decision</th><th>regressions and environment failures</th><th>known issues</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table></section>")


def _grid_section(history: Sequence[Night]) -> str:
    tests: dict[str, None] = {}
    for n in history:
        tests.update(dict.fromkeys(n.results.tests))
    names = list(tests)
    cell, label_w = 8, 320
    width, height = label_w + cell * len(history) + 4, 14 + cell * len(names)
    out = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           'xmlns="http://www.w3.org/2000/svg"><title>outcome of every test, night by night</title>']
    for j, name in enumerate(names):
        short = name if len(name) <= 52 else "…" + name[-51:]
        y = 14 + j * cell
        out.append(f'<g><title>{escape(name)}</title><text class="label" x="{label_w - 4}" y="{y + 7}" '
                   f'text-anchor="end" font-size="7">{escape(short)}</text></g>')
        kinds = [_cell(n.results.tests.get(name)) for n in history]
        i = 0
        while i < len(kinds):  # one rectangle per stretch of nights with the same outcome
            j2 = i
            while j2 + 1 < len(kinds) and kinds[j2 + 1] == kinds[i]:
                j2 += 1
            first, last = _night_label(history[i].results), _night_label(history[j2].results)
            when = first if i == j2 else f"{first} to {last}"
            out.append(f'<rect class="cell-{kinds[i]}" x="{label_w + i * cell}" y="{y}" '
                       f'width="{(j2 - i + 1) * cell - 1}" height="{cell - 1}"><title>{when}: '
                       f"{'not run' if kinds[i] == 'none' else kinds[i]}</title></rect>")
            i = j2 + 1
    out.append("</svg>")
    return (f'<section id="grid"><h2>Every test, night by night</h2><p class="mut">{_badge("passed")}'
            f"{_badge('failed')}{_badge('environment')}{_badge('xfail')}{_badge('skipped')} oldest night "
            f"on the left</p>{''.join(out)}</section>")


def _cell(entry: TestEntry | None) -> str:
    if entry is None:
        return "none"
    return "environment" if entry["failure"] == "environment" else _label(entry)


def build_page(runs: Sequence[Results], *, max_drop: float = 0.1, alpha: float = compare.DEFAULT_ALPHA,
               history: int = compare.DEFAULT_HISTORY, title: str = "kvtest report") -> str:
    """The whole page for ``runs`` (oldest first, at least one)."""
    if not runs:
        raise ValueError("build_page needs at least one run")
    newest = runs[-1]
    several = len(runs) > 1
    replay = nights(runs, max_drop, alpha, history) if several else []
    body = []
    if several:
        last = replay[-1]
        flagged = [n for n in replay if n.regressions]
        css = "callout" if last.regressions else "callout env" if last.environment else "callout ok"
        listed = [f'<div>{_badge(r.verdict, "regression")} <code>{escape(r.label)}</code> '
                  f"{escape(r.figures)}</div>" for r in last.regressions]
        more = (f"<details><summary>{len(listed) - 8} more</summary>{''.join(listed[8:])}</details>"
                if len(listed) > 8 else "")
        head = (f'<div class="{css}" id="newest"><b>newest night: {escape(last.decision)}</b>'
                + "".join(listed[:8]) + more
                + f'<div class="mut">{len(flagged)} of {len(replay)} nights had a regression; '
                '<a href="#gate">every decision</a></div></div>')
        body += [head, _failing_callout(newest.tests), _charts_section(replay),
                 _gate_section(replay, max_drop, alpha, history), _grid_section(replay)]
    body.append(_run_section(newest, "Newest run" if several else "Run", callout=not several))
    span = f"{len(runs)} runs, {escape(runs[0].created)} to {escape(newest.created)}" if several else \
        f"run {escape(newest.run_id)}"
    links = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("run", "tests"), *((("bandwidth", "bandwidth"), ("gate", "gate"), ("grid", "history grid"))
                            if several else ())))
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{escape(title)}</h1><p>{span}; generated {generated} by kvtest report</p>"
            f"<nav>{links}</nav></header><main>"
            '<div class="tools"><input type="search" id="q" placeholder="find a test, role, API or message" '
            'aria-label="find"> <label><input type="checkbox" id="bad"> only failures and regressions'
            "</label></div>"
            f"{''.join(body)}</main><script>{_JS}</script></body></html>\n")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kvtest report``."""
    try:
        max_drop = compare.parse_max_drop(args.max_drop)
        alpha = compare.parse_alpha(args.alpha)
        history = compare.parse_history(args.history)
        runs = load_runs(args.paths)
    except (ValueError, ResultsError) as exc:
        print(f"kvtest report: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, build_page(runs, max_drop=max_drop, alpha=alpha, history=history,
                                         title=args.title))
    except OSError as exc:
        print(f"kvtest report: error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"kvtest report: {len(runs)} run{'s' if len(runs) > 1 else ''} -> {out} "
          f"({out.stat().st_size / 1024:.0f} KiB)")
    return 0
