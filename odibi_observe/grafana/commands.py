"""``odibi-observe dashboards build [--out DIR] [--check]``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from odibi_observe._cliargs import (
    action_parsers,
    check_out_dir,
    fail,
    json_arg,
    log_level_arg,
    make_out_dir,
    out_arg,
    print_error,
)

DEFAULT_OUT = "dashboards"

DESCRIPTION = """\
Dashboards as code: the Grafana dashboards, their provisioning, the Prometheus configuration
and alert rules, generated from the conventions.
"""

BUILD_DESCRIPTION = """\
Render every dashboard to deterministic JSON, and the Grafana provisioning, Prometheus
configuration and alert rules to YAML, under --out. With --check, write nothing: exit 1 naming
the files that differ from a fresh build.
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``dashboards build`` to the odibi-observe parser."""
    dashboards = sub.add_parser(
        "dashboards",
        help="build the Grafana dashboards, provisioning and alert rules",
        description=DESCRIPTION,
    )
    build = action_parsers(dashboards, "dashboards").add_parser(
        "build",
        help="write the generated JSON and YAML (or check that they are current)",
        description=BUILD_DESCRIPTION,
    )
    output = build.add_argument_group("output")
    out_arg(output, DEFAULT_OUT, "output directory")
    output.add_argument(
        "--check",
        action="store_true",
        help="only compare with the files in DIR; exit 1 if any is stale",
    )
    json_arg(output, "the files written (or stale)")
    log_level_arg(build)
    build.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    try:
        from odibi_observe.grafana.render import stale, write
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        print_error(
            f"building dashboards needs grafana-foundation-sdk "
            f"(pip install 'odibi-observe[grafana]'): {exc}"
        )
        return 2
    out = check_out_dir(args.out)
    if args.check:
        outdated = stale(out)
        if args.json:
            print(json.dumps({"out": str(out), "stale": [str(out / r) for r in outdated]}))
            return 1 if outdated else 0
        if outdated:
            print(
                f"stale in {out}: run 'odibi-observe dashboards build --out {out}'", file=sys.stderr
            )
            for rel in outdated:
                print(f"  {out / rel}", file=sys.stderr)
            return 1
        print(f"{out}: every generated file is current")
        return 0
    make_out_dir(out)
    try:
        changed = write(out)
    except OSError as exc:
        return fail(f"--out {str(out)!r}: cannot write: {exc.strerror or exc}")
    if args.json:
        print(json.dumps({"out": str(out), "written": [str(out / r) for r in changed]}))
        return 0
    for rel in changed:
        print(f"wrote {out / rel}")
    if not changed:
        print(f"{out}: every generated file is current")
    return 0
