"""User-facing text: no project-internal words, no install command that cannot work, no pointer to
a file that is not in the repository, a license field current setuptools accepts."""

import glob
import re
import tomllib
from pathlib import Path

import pytest

from sepconv.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
# README, docs and everything users run or read (sources: docstrings, help, messages, output)
TEXT_FILES = sorted({ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("src/sepconv/**/*.py"),
                     *ROOT.glob("benchmarks/*.py"), *ROOT.glob("benchmarks/results/*.md")})
JARGON = [r"\bseeds\b", r"\bseed says\b", r"\bseed tutorial\b", r"\(seed \d\)", r"\bthe seed's\b", r"\bissue\b",
          r"shared/", r"\bthis session\b"]
# paths the docs name that are not files of this repository: outputs of a run, a user's own files
NOT_REPO_FILES = {".venv/", "sepconv-demo/", "report.md", "digits_cnn.pt", "Python.h", "script.py",
                  "~/.cache/sepconv/kernels/", "$TORCH_EXTENSIONS_DIR",
                  "benchmarks/results/latest/"}
PATHLIKE = re.compile(r"^[\w.~$/*{},-]*(/|\.(py|md|cpp|h|sh|toml|json|pt))$"
                      r"|^(src|tests|benchmarks|docs|scripts|\.ci|csrc|models)/[\w.*{},/-]+$")


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md"))]


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_jargon(path):
    text = path.read_text()
    found = [(m.group(0), text.count("\n", 0, m.start()) + 1) for pat in JARGON for m in re.finditer(pat, text, re.I)]
    assert found == [], f"{path.relative_to(ROOT)}: internal words (word, line): {found}"


def test_cli_help_has_no_internal_jargon():
    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions:
        texts += [sub.format_help() for sub in action.choices.values()]
    for pat in JARGON:
        assert not [t for t in texts if re.search(pat, t, re.I)], pat


@pytest.mark.parametrize("path", [ROOT / "README.md", *ROOT.glob("src/sepconv/**/*.py")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_install_from_the_package_index(path):
    """sepconv is not on PyPI: `pip install sepconv` / "sepconv[demo]" only as 'once released'."""
    lines = path.read_text().splitlines()
    bad = [(i + 1, line) for i, line in enumerate(lines)
           if re.search(r"pip install +['\"]?sepconv\b(?!\[[\w,]+\] @)", line) and "once" not in line.lower()]
    assert bad == []


def _referenced_paths(text: str) -> list[str]:
    links = [t for t in re.findall(r"\]\(([^)#]+)\)", text) if not re.match(r"\w+://", t)]
    ticks = []
    for tok in re.findall(r"`([^`\n]+)`", text):
        if tok.startswith(("python ", "bash ")):
            tok = tok.split()[1]
        if " " not in tok and PATHLIKE.match(tok) and "<" not in tok:
            ticks.append(tok)
    return links + ticks


def _exists(ref: str) -> bool:
    pattern = ref.rstrip("/")
    m = re.search(r"\{([^}]*)\}", pattern)
    options = [pattern.replace(m.group(0), o) for o in m.group(1).split(",")] if m else [pattern]
    bases = [ROOT, ROOT / "src" / "sepconv", ROOT / "src" / "sepconv" / "models"]
    return all(any(glob.glob(str(base / o)) for base in bases) for o in options)


@pytest.mark.parametrize("path", _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_point_only_at_files_in_the_repo(path):
    refs = _referenced_paths(path.read_text())
    assert len(refs) >= 2 or path.name != "README.md", refs  # the check itself finds the README's paths
    missing = [r for r in refs if r not in NOT_REPO_FILES and not _exists(r)]
    assert missing == [], f"{path.relative_to(ROOT)} names files that are not in the repository: {missing}"


def test_license_is_an_spdx_string():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert project["build-system"]["requires"] == ["setuptools>=77"]  # the first to accept an SPDX string
