"""The README's examples run as written.

Every ```python block of README.md runs on its own (a fresh namespace: it must import and define
everything it uses) in one fresh interpreter, in a temporary working folder. A block can be
excluded only by a visible ``<!-- skip-test: reason -->`` line right before it, and is then
reported as skipped with that reason. The README's (and docs/worked-examples.md's) ``sepconv
explain`` commands must print the numbers the text states.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sepconv.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*skip-test:\s*(.+?)\s*-->")

RUNNER = r"""
import contextlib, io, json, sys, time, traceback
blocks, results = json.load(open(sys.argv[1])), []
for line, code in blocks:
    start, cpu, out = time.perf_counter(), time.process_time(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md, block at line {line}", "exec"), {"__name__": "__main__"})
        error = None
    except BaseException:
        error = traceback.format_exc()
    results.append(dict(line=line, error=error, seconds=round(time.perf_counter() - start, 2),
                        cpu_seconds=round(time.process_time() - cpu, 2)))
json.dump(results, open(sys.argv[2], "w"))
"""


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of every ```python block, in order."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            skip = SKIP.search(lines[i - 1]) if i > 0 else None
            blocks.append((start + 1, "\n".join(lines[start:end]) + "\n", skip.group(1) if skip else None))
            i = end
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text())


@pytest.fixture(scope="module")
def block_results(tmp_path_factory) -> dict:
    """Run the blocks not marked skip-test in one fresh interpreter; line -> result."""
    work = tmp_path_factory.mktemp("readme")
    (work / "blocks.json").write_text(json.dumps([(line, code) for line, code, skip in BLOCKS if skip is None]))
    # one thread: on a loaded machine two OpenMP threads spin-wait for each other (10x slower here)
    proc = subprocess.run([sys.executable, "-c", RUNNER, "blocks.json", "results.json"], cwd=work,
                          env=dict(os.environ, OMP_NUM_THREADS="1", SEPCONV_CACHE_DIR=str(work / "cache")),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return {r["line"]: r for r in json.loads((work / "results.json").read_text())}


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 9  # the extraction itself works: Layers ... Fast inference


@pytest.mark.parametrize("line, code, skip", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_python_block_runs_as_written(line, code, skip, block_results):
    if skip is not None:
        pytest.skip(f"README block at line {line}: {skip}")
    result = block_results[line]
    assert result["error"] is None, f"README.md block at line {line} failed:\n{result['error']}"


def explain_commands(text: str) -> list[tuple[str, list[str]]]:
    """``(command, numbers the text states for it)`` for each ``sepconv explain`` command line of
    a bash block (numbers from its comment) and each one alone on a line followed by a table (the
    numbers of the table's last column)."""
    found, lines = [], text.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith("sepconv explain"):  # in a ```bash block: command   # numbers
            command, _, comment = line.partition("#")
            found.append((command.strip(), re.findall(r"\d[\d,]*\d|\d", comment)))
        elif re.fullmatch(r"`sepconv explain [^`]+`", line):  # docs: the command, then its table
            rows = [r for r in lines[i + 1:i + 12] if r.startswith("|") and not r.startswith(("| part", "|---"))]
            found.append((line.strip("`"), [r.rstrip(" |").rsplit("|", 1)[1].strip(" *") for r in rows]))
    return found


EXPLAINS = [(path.name, cmd, numbers) for path in (README, ROOT / "docs" / "worked-examples.md")
            for cmd, numbers in explain_commands(path.read_text())]


def test_the_explain_examples_state_numbers():
    assert sum(1 for _, _, numbers in EXPLAINS if numbers) >= 4  # the extraction itself works


@pytest.mark.parametrize("where, command, numbers", EXPLAINS, ids=[f"{e[0]}:{e[1][16:]}" for e in EXPLAINS])
def test_explain_prints_the_stated_numbers(where, command, numbers, capsys):
    assert main(shlex.split(command)[1:]) == 0
    out = capsys.readouterr().out
    assert out.strip()
    missing = [n for n in numbers if not re.search(rf"(?<![\d,]){re.escape(n)}(?![\d,])", out)]
    assert missing == [], f"{where}: `{command}` does not print {missing}:\n{out}"
