"""Copy the benchmark tables (benchmarks/results/*.md) into README.md between markers.

    python benchmarks/update_readme.py [--results DIR] [--update-results]

Without ``--update-results`` nothing is written: it prints the README lines that would change
and exits with status 1 if the README's tables differ from the results, 0 if they match (a check
for CI). ``--update-results`` writes README.md. ``benchmarks/speed.py --update-results`` and
``benchmarks/conversion.py --update-results`` call it after writing the tracked results.

The README's tables are therefore always those of a real run, never edited by hand. The layer
table of speed.md is long; the README keeps its summary (targets, MobileNetV1, filters) and links
to the full file. conversion_speed.md and convert_time.md are copied whole where they exist in the
results folder (each between its own markers).
"""

import argparse
import difflib
import os
import re
import sys

from sepconv._io import write_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "README.md")


OPTIONAL = ("conversion_speed", "convert_time")  # tables of benchmarks whose tracked results may not exist yet


def section(text: str, start: str, end: str = None) -> str:
    i = text.index(start)
    j = text.index(end, i) if end else len(text)
    return text[i:j].strip() + "\n"


def updated_readme(results: str, readme: str) -> str:
    """``readme`` (the text) with its tables replaced by those in the ``results`` folder."""
    with open(os.path.join(results, "conversion.md")) as f:
        conversion = f.read().strip() + "\n"
    with open(os.path.join(results, "speed.md")) as f:
        speed_md = f.read()
    speed = (speed_md.splitlines()[0] + "\n\n" + section(speed_md, "Targets") +
             "\nPer layer shape, batch and thread count: [benchmarks/results/speed.md](benchmarks/results/speed.md).\n")
    tables = [("conversion", conversion), ("speed", speed)]
    for name in OPTIONAL:  # copied whole where the tracked results have them
        path = os.path.join(results, f"{name}.md")
        if os.path.exists(path):
            with open(path) as f:
                tables.append((name, f.read().strip() + "\n"))
    for name, body in tables:
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- {name}:start --> ... <!-- {name}:end --> markers")
        readme = pattern.sub(lambda m: m.group(1) + body + m.group(2), readme)
    return readme


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=os.path.join(HERE, "results"), metavar="DIR",
                   help="folder with conversion.md and speed.md (default: benchmarks/results/, the tracked copies)")
    p.add_argument("--update-results", action="store_true",
                   help="write README.md (default: only show what would change)")
    args = p.parse_args(argv)
    with open(README) as f:
        readme = f.read()
    new = updated_readme(args.results, readme)
    if args.update_results:
        if new != readme:
            write_atomic(README, lambda f: f.write(new.encode()))
        print("README.md " + ("updated" if new != readme else "already up to date"))
        return 0
    if new == readme:
        print("README.md's benchmark tables match the results")
        return 0
    sys.stdout.writelines(difflib.unified_diff(readme.splitlines(True), new.splitlines(True), "README.md", "README.md (updated)"))
    print("README.md's benchmark tables differ from the results; --update-results writes them")
    return 1


if __name__ == "__main__":
    sys.exit(main())
