"""`sepconv demo --quick` end to end, in a temporary directory, as a user runs it."""

import re
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    run = subprocess.run([sys.executable, "-m", "sepconv.cli", "demo", "--quick", "--seed", "1"], cwd=cwd,
                         capture_output=True, text=True, timeout=600)
    return run, cwd / "sepconv-demo"


def test_demo_quick_exits_zero_and_writes_everything(demo_run):
    run, out = demo_run
    assert run.returncode == 0, run.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["accuracy_vs_macs.png", "digits_cnn.pt", "latency.png", "layer_error.png", "report.md", "spectra.png"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_demo_report_contains_the_printed_numbers(demo_run):
    run, out = demo_run
    report = (out / "report.md").read_text()
    printed = run.stdout
    # every MAC count and accuracy of the summary lines printed in section 4 is in the report
    # (a data-free conversion that chose other structures or ranks than the calibrated one: its own MACs too)
    rows = re.findall(r"^\s+(\w+)\s+(\d+)%: ([\d,]+) MACs(?: \(data-free: ([\d,]+ MACs, [\d,]+ params)\))?; "
                      r"accuracy ([\d.]+%) -> ([\d.]+%) -> ([\d.]+%)", printed, re.M)
    assert len(rows) == 8
    for method, budget, macs, macs_free, free, cal, dist in rows:
        assert f"| converted: {method} | {budget}% | {macs} |" in report
        if macs_free:
            assert f"| {free} ({macs_free}) | {cal} | {dist} |" in report
        else:
            assert f"| {free} | {cal} | {dist} |" in report
    acc = re.search(r"2\. Training.*?test accuracy ([\d.]+%), ([\d,]+) MACs", printed, re.S)
    assert acc and f"| {acc.group(2)} |" in report and f"| {acc.group(1)} |" in report
    for seed_number in ("45,630", "9,633", "1,521", "1,092", "338,688", "38,955"):
        assert seed_number in printed and seed_number in report
    # the latency table: every model, eager and optimized, each row explained in the report and on the console
    models = ["original"] + [f"{m} {b}%" for b in (50, 25) for m in ("depthwise", "blueprint", "spatial", "auto")]
    rows = re.findall(r"^\| ([^|]+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\w+]+) \| ([\d.]+)x \| ([^|]+) \|$",
                      report, re.M)
    assert [r[0] for r in rows] == models + ["separable twin"]
    flat = " ".join(printed.split())
    for name, macs, *_, why in rows:
        assert why.endswith(".") and (why.startswith("The reference") if name == "original" else "than the optimized original" in why)
        assert f"{name}: {why}" in flat
    assert "on **one thread**" in report and "batch of 64" in report
    # the best conversion, its tie-break rule, and what calibration did, in words
    assert "(Best: highest test accuracy after distillation; among equal accuracies the lower output error" in report
    assert "### Where calibration did not lower the error" in report
