"""What ``sepconv convert`` reports on the user's own data: held-out errors, distillation that never
makes the model worse, stage lines on stderr (never on stdout), one-sentence summaries."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import sepconv
import sepconv.train
from sepconv.cli import main

import _tiny_resnet


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A folder with tiny.py:factory (a BatchNorm ResNet-like model) and 32 samples in cal.pt."""
    shutil.copy(Path(_tiny_resnet.__file__), tmp_path / "tiny.py")
    torch.save(_tiny_resnet.samples(32), tmp_path / "cal.pt")
    torch.save(_tiny_resnet.samples(5), tmp_path / "five.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _convert(capsys, *extra, data="cal.pt"):
    argv = ["convert", "tiny.py:factory", "--input", "1x3x12x12", "--budget", "0.5", "--calibration-data", data,
            "--output", "small.pt2", "--json", *extra]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _errors_of_recipe(x):
    """The written recipe's model against the original (float64), on ``x``."""
    original = _tiny_resnet.factory()
    mine = sepconv.apply_recipe(_tiny_resnet.TinyResNet(), "small.recipe.pt").eval()
    with torch.no_grad():
        return _rel(mine(x), original.double()(x.double()))


def test_errors_are_measured_on_the_held_out_last_quarter(tiny, capsys):
    report, _ = _convert(capsys)
    data = torch.load("cal.pt")
    assert report["message"].endswith(
        f"Model output relative error {report['output_error']:.4f} (and the layers' output errors) on 8 held-out "
        "samples of --calibration-data (not used for fitting).")
    assert report["output_error"] == pytest.approx(_errors_of_recipe(data[24:]), rel=1e-4)
    # fit on the first 24 only: the same as converting with them as the calibration data
    original = _tiny_resnet.factory()
    direct, _ = sepconv.convert(original, budget=0.5, example_input=data[:1], calibration_data=[data[:24]])
    with torch.no_grad():
        assert _rel(direct(data[24:]), original(data[24:])) == pytest.approx(report["output_error"], rel=1e-4)
    assert all(row["output_error"] > 0 for row in report["layers"] if row["structure"] != "dense")


def test_fewer_than_8_samples_are_said_to_be_in_sample(tiny, capsys):
    report, _ = _convert(capsys, data="five.pt")
    assert report["message"].endswith(
        f"Model output relative error {report['output_error']:.4f} (and the layers' output errors) on the 5 samples "
        "of --calibration-data (in-sample: the same samples the layers were fit on; with 8 or more, a quarter is "
        "held out).")
    assert report["output_error"] == pytest.approx(_errors_of_recipe(torch.load("five.pt")), rel=1e-4)


def test_distillation_does_not_make_the_reported_error_worse(tiny, capsys):
    before, _ = _convert(capsys)
    after, _ = _convert(capsys, "--distill-epochs", "1")
    assert 0 < before["output_error"] < 0.2
    assert after["output_error"] <= before["output_error"]
    assert after["output_error"] == pytest.approx(_errors_of_recipe(torch.load("cal.pt")[24:]), rel=1e-4)


def test_a_distillation_that_makes_it_worse_is_undone(tiny, capsys, monkeypatch):
    before, _ = _convert(capsys)

    def harmful(student, *args, **kwargs):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.1)

    monkeypatch.setattr(sepconv.train, "distill", harmful)
    after, _ = _convert(capsys, "--distill-epochs", "1")
    assert after["output_error"] == pytest.approx(before["output_error"], rel=1e-6)
    assert after["output_error"] == pytest.approx(_errors_of_recipe(torch.load("cal.pt")[24:]), rel=1e-4)
    assert re.search(r"Distillation \(1 epoch\(s\), --lr 0\.0003\) made the model output error worse "
                     rf"\({before['output_error']:.4f} -> \d+\.\d{{4}}\), so the model from before distillation is "
                     r"kept\. ", after["message"])


def test_stage_lines_go_to_stderr_and_quiet_or_no_terminal_silences_them(tiny, capsys):
    report, err = _convert(capsys, "--distill-epochs", "1", "--progress")  # stdout is still pure JSON
    lines = [re.sub(r"^sepconv: \[ *\d+\.\d s\] ", "", line) for line in err.splitlines()]
    n = sum(row["structure"] != "dense" for row in report["layers"])
    assert lines == ["loading the model tiny.py:factory",
                     "checking that torch.export can save the model",
                     "converting: choosing a structure and rank for each of the 5 convolutions",
                     f"refitting {n} converted layers on 24 samples (least squares, layer by layer)",
                     *[f"refitting layer {i}/{n}" for i in range(1, n + 1)],
                     "distilling for 1 epoch(s) on 24 samples",
                     lines[-3],
                     "optimizing the converted model for inference on this CPU (as sepconv optimize does)",
                     "writing small.pt2 and small.recipe.pt"]
    assert re.fullmatch(r"distilled 1/1 epoch\(s\): output error \d\.\d{4} -> \d\.\d{4}", lines[-3])
    _, err = _convert(capsys, "--quiet")
    assert err == ""
    _, err = _convert(capsys)  # stderr is not a terminal here
    assert err == ""


def test_cost_latency_needs_a_budget_and_is_passed_to_convert(monkeypatch, capsys, tmp_path):
    """--cost latency without --budget is one error line before any work; with it, convert gets cost='latency'."""
    from sepconv.cli import main

    assert main(["convert", "digits_cnn", "--rank", "2", "--cost", "latency", "--output", str(tmp_path / "m.pt2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sepconv: error: --cost latency: a budget of time; expected --budget (a fraction of the optimized "
                   "model's measured time), got none"]
    seen = {}
    import importlib

    conv_pkg = importlib.import_module("sepconv.convert")
    real = conv_pkg.convert

    def spy(*a, **k):
        seen.update(k)
        k["cost"] = "macs"  # the conversion itself is tested elsewhere; no timing here
        return real(*a, **k)

    monkeypatch.setattr(conv_pkg, "convert", spy)
    assert main(["convert", "digits_cnn:4", "--budget", "0.5", "--cost", "latency", "--quiet",
                 "--output", str(tmp_path / "m.pt2")]) == 0
    assert seen["cost"] == "latency"
