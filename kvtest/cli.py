"""The ``kvtest`` command: ``kvtest doctor`` (preflight), ``kvtest compare`` (CANN-upgrade gate) and
``kvtest run`` (llm_datadist programs as one P/D group, on sim through kvtest's shims), ``kvtest report``
(results as one HTML page) and ``kvtest upstream`` (the real llm_datadist built on CPU)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvtest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from kvtest import doctor
    from kvtest.results import compare, page

    doctor.add_arguments(sub.add_parser("doctor", help=doctor.HELP, description=doctor.HELP))
    compare.add_arguments(sub.add_parser("compare", help=compare.HELP, description=compare.HELP))
    from kvtest.dropin import runner

    runner.add_arguments(sub.add_parser("run", help=runner.HELP, description=runner.DESCRIPTION))
    page.add_arguments(sub.add_parser("report", help=page.HELP, description=page.HELP))
    from kvtest.upstream import cli as upstream

    upstream.add_arguments(sub.add_parser("upstream", help=upstream.HELP, description=upstream.DESCRIPTION))
    args = parser.parse_args(argv)
    handlers = {
        "doctor": doctor.run,
        "compare": compare.run,
        "run": runner.run,
        "report": page.run,
        "upstream": upstream.run,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
