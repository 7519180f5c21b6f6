"""Copy the latest benchmark tables (benchmarks/results/*.md) into README.md between markers.

    python benchmarks/update_readme.py

The README's tables are therefore always those of a real run, never edited by hand. The layer
table of speed.md is long; the README keeps its summary (targets, MobileNetV1, filters) and links
to the full file.
"""

import os
import re
import sys

from sepconv._io import write_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "README.md")


def section(text: str, start: str, end: str = None) -> str:
    i = text.index(start)
    j = text.index(end, i) if end else len(text)
    return text[i:j].strip() + "\n"


def main() -> int:
    with open(os.path.join(HERE, "results", "conversion.md")) as f:
        conversion = f.read().strip() + "\n"
    with open(os.path.join(HERE, "results", "speed.md")) as f:
        speed_md = f.read()
    speed = (speed_md.splitlines()[0] + "\n\n" + section(speed_md, "Targets") +
             "\nPer layer shape, batch and thread count: [benchmarks/results/speed.md](benchmarks/results/speed.md).\n")
    with open(README) as f:
        readme = f.read()
    for name, body in (("conversion", conversion), ("speed", speed)):
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- {name}:start --> ... <!-- {name}:end --> markers")
        readme = pattern.sub(lambda m: m.group(1) + body + m.group(2), readme)
    write_atomic(README, lambda f: f.write(readme.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
