"""Where a benchmark writes its results: never over the tracked files unless asked.

``benchmarks/results/`` holds the results the README quotes (tracked in git). A plain run writes
to ``benchmarks/results/latest/`` (ignored by git) or to ``--output DIR``; ``--update-results``
writes the tracked files instead, and copies the tables into README.md.
"""

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")  # tracked: what the README quotes
LATEST = os.path.join(RESULTS, "latest")  # not tracked (.gitignore): the default output


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--output DIR`` and ``--update-results`` to a benchmark's argument parser."""
    parser.add_argument("--output", "--out", dest="output", default=None, metavar="DIR",
                        help="folder for the results (default: benchmarks/results/latest/, not tracked by git)")
    parser.add_argument("--update-results", action="store_true",
                        help="write the tracked benchmarks/results/ files and copy the tables into README.md "
                             "(off by default: a plain run modifies no tracked file)")


def output_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The folder to write to, from ``--output`` / ``--update-results`` (exits on a conflict)."""
    if args.update_results and args.output is not None:
        parser.error("--output and --update-results: expected at most one of them, got both")
    out = RESULTS if args.update_results else (args.output or LATEST)
    if os.path.exists(out) and not os.path.isdir(out):
        parser.error(f"--output: expected a folder, got the file {out!r}")
    return out


def write_results(out: str, stem: str, data: dict, table: str) -> None:
    """Write ``STEM.json`` (``data``) and ``STEM.md`` (``table``) into ``out``, atomically; print the
    table. Written to the tracked results (``--update-results``), the README's tables are updated too."""
    from sepconv._io import write_atomic

    os.makedirs(out, exist_ok=True)
    for name, text in ((f"{stem}.json", json.dumps(data, indent=2)), (f"{stem}.md", table)):
        write_atomic(os.path.join(out, name), lambda f, text=text: f.write(text.encode()))
    print(table)
    print(f"results written to {out}")
    if os.path.abspath(out) == os.path.abspath(RESULTS):
        import update_readme

        update_readme.main(["--update-results"])
