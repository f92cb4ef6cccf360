"""`pivotal report`: one self-contained HTML page of a `pivotal analyze` output directory.

    pivotal report runs/analyze
    pivotal report runs/analyze --cross-sampling runs/cross_sample/cross_sampling.json
    pivotal report runs/analyze --out report.html --max-responses 50 --color-by js

Reads ANALYSIS_DIR/summary.json, tokens.parquet and responses.jsonl (written by `pivotal analyze`)
and, with --cross-sampling, a cross_sampling.json (written by `pivotal cross-sample`). Writes
--out (default ANALYSIS_DIR/report.html) and prints its path. The page loads nothing from the
network: plots are inline SVG, the token view's hover data is embedded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .report import COLOR_BY, write_report


def run(args) -> int:
    """Write the report; print the path written."""
    if args.max_responses < 0:
        raise ValueError(f"--max-responses must be >= 0, got {args.max_responses}")
    out = Path(args.out) if args.out else Path(args.analysis_dir) / "report.html"
    path = write_report(args.analysis_dir, out, cross_sampling_path=args.cross_sampling,
                        max_responses=args.max_responses, color_by=args.color_by)
    print(path)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `pivotal report` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "report", help="one self-contained HTML page of a `pivotal analyze` output "
                       "(plots and a token view)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("analysis_dir", metavar="ANALYSIS_DIR",
                   help="output directory of `pivotal analyze`")
    p.add_argument("--cross-sampling", metavar="FILE",
                   help="cross_sampling.json of `pivotal cross-sample`: adds the accuracy vs "
                        "budget curves")
    p.add_argument("--out", metavar="FILE",
                   help="where to write the page (default ANALYSIS_DIR/report.html)")
    p.add_argument("--max-responses", type=int, default=20,
                   help="responses shown in the token view, the first ones (default %(default)s)")
    p.add_argument("--color-by", choices=COLOR_BY, default="dlogp",
                   help="initial token colouring; the page has a toggle (default %(default)s)")
    p.set_defaults(fn=run)
    return p
