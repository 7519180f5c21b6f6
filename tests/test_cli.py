"""The sepconv command: outputs, and one clean error line (exit 2) for user mistakes."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from sepconv.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_depthwise(capsys):
    code, out, _ = run(capsys, "explain", "--input", "15x15x3", "--kernel", "3", "--filters", "10", "--padding", "valid")
    assert code == 0
    assert "45,630" in out and "9,633" in out and "4,563 + 5,070" in out


def test_explain_spatial(capsys):
    code, out, _ = run(capsys, "explain", "--input", "15x15x1", "--kernel", "3", "--filters", "1", "--padding", "valid", "--spatial")
    assert code == 0
    assert "1,521" in out and "585 + 507 = 1,092" in out and "585 + 585 = 1,170" in out


def test_explain_table(capsys):
    code, out, _ = run(capsys, "explain", "--input", "7x7x3", "--filters", "256", "--padding", "same", "--table")
    assert code == 0 and "338,688" in out and "38,955" in out and "blueprint separable" in out


def test_profile_builtin_json_and_markdown(capsys):
    code, out, _ = run(capsys, "profile", "mobilenet_v1", "--input", "1x3x224x224", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["macs"] == 568_740_352 and data["params"] == 4_231_976
    code, out, _ = run(capsys, "profile", "mobilenet_v1:0.5", "--markdown")
    assert code == 0 and "149,497,088 MACs" in out and "| conv 1x1 |" in out
    code, out, _ = run(capsys, "profile", "mobilenet_v1:0.25", "--input", "1x3x128x128")
    assert code == 0 and "features.13.0.pointwise" in out
    # written to a file or pipe (capsys), a table wider than 100 columns is printed whole, not cut
    code, out, _ = run(capsys, "profile", "mobilenet_v1", "--input", "16x3x224x224")
    assert code == 0 and "features.13.0.pointwise" in out and "16x1024x7x7" in out and "\u2026" not in out


def test_profile_file_factory_and_saved_model(capsys, tmp_path):
    src = tmp_path / "net.py"
    src.write_text("import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n")
    code, out, _ = run(capsys, "profile", f"{src}:make", "--input", "1x3x10x10", "--json")
    assert code == 0 and json.loads(out)["macs"] == 8 * 8 * 4 * 27
    saved = tmp_path / "model.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)), saved)
    code, out, _ = run(capsys, "profile", str(saved), "--input", "1x3x10x10", "--json")
    assert code == 0 and json.loads(out)["macs"] == 8 * 8 * 4 * 27


def test_a_factory_imports_the_modules_next_to_its_file(capsys, tmp_path, monkeypatch):
    """FILE.py:FACTORY is imported as `python FILE.py` would run it: a module next to it imports
    (it failed with ModuleNotFoundError), also from another working folder."""
    (tmp_path / "blocks_beside.py").write_text("import torch.nn as nn\ndef stem():\n    return nn.Conv2d(3, 4, 3)\n")
    src = tmp_path / "net_beside.py"
    src.write_text("from blocks_beside import stem\ndef make():\n    return stem()\n")
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the folder it adds is gone after the test
    code, out, err = run(capsys, "profile", f"{src}:make", "--input", "1x3x10x10", "--json")
    assert code == 0, err
    assert json.loads(out)["macs"] == 8 * 8 * 4 * 27


@pytest.mark.parametrize("argv,message", [
    (["explain", "--input", "15x15", "--filters", "3"], "sepconv: error: --input: expected 3 sizes, got 2 in '15x15'"),
    (["explain", "--input", "15xAx3", "--filters", "3"], "sepconv: error: --input: expected sizes separated by 'x' like 15x15x3"),
    (["explain", "--input", "15x15x3", "--filters", "3", "--padding", "full"],
     "sepconv: error: --padding: expected 'valid', 'same' or a non-negative int, got 'full'"),
    (["explain", "--input", "2x2x3", "--filters", "3"], "sepconv: error: input_shape: spatial size 2 (padded 2) is smaller than the dilated kernel 3"),
    (["profile", "mobilenet_v2"], "sepconv: error: model: expected a built-in name"),
    (["profile", "mobilenet_v1:wide"], "sepconv: error: model: expected a number after ':' in 'mobilenet_v1:wide', got 'wide'"),
    (["profile", "mobilenet_v1", "--input", "1x3x0x224"], "sepconv: error: --input: expected positive sizes, got '1x3x0x224'"),
    (["profile", "mobilenet_v1", "--input", "1x4x64x64"], "sepconv: error: profile: layer 'features.0.0' (Conv2d) failed on input of shape (1, 4, 64, 64)"),
    (["profile", "missing.py:make"], "sepconv: error: model: file 'missing.py' not found"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unreadable_and_wrong_files(capsys, tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "profile", str(bad), "--input", "1x3x8x8")
    assert code == 2 and err.startswith(f"sepconv: error: model: could not read '{bad}' with torch.load")
    sd = tmp_path / "sd.pt"
    torch.save(nn.Conv2d(3, 3, 3).state_dict(), sd)
    code, _, err = run(capsys, "profile", str(sd), "--input", "1x3x8x8")
    assert code == 2 and "holds a OrderedDict, expected a whole nn.Module" in err
    code, _, err = run(capsys, "profile", str(sd))
    assert code == 2


def test_console_script_runs_without_traceback(tmp_path):
    exe = [sys.executable, "-m", "sepconv.cli"]
    ok = subprocess.run(exe + ["explain", "--input", "15x15x3", "--filters", "10"], capture_output=True, text=True)
    assert ok.returncode == 0 and "9,633" in ok.stdout
    bad = subprocess.run(exe + ["profile", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_convert_writes_model_and_report(capsys, tmp_path, trained_digits_cnn):
    src = tmp_path / "digits.pt"
    torch.save(trained_digits_cnn, src)
    out = tmp_path / "small.pt"
    code, text, err = run(capsys, "convert", str(src), "--input", "1x1x16x16", "--method", "auto", "--budget", "0.3",
                          "--calibrate", "128", "--distill-epochs", "1", "--output", str(out), "--json")
    assert code == 0, err
    report = json.loads(text)
    assert report["macs_after"] <= 0.3 * report["macs_before"]
    import sepconv
    from sepconv.models import digits_cnn

    small = sepconv.apply_recipe(digits_cnn(32), tmp_path / "small.recipe.pt").eval()  # the user's class again
    assert sepconv.profile(small, (1, 1, 16, 16)).macs == report["macs_after"]
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(sepconv.load(out)(x), small(x), rtol=1e-5, atol=1e-5)  # the self-contained archive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.pt", "small.pt", "small.recipe.pt"]


def test_convert_saves_the_converted_model_optimized_for_inference(capsys, tmp_path, monkeypatch):
    """The archive is the program for production: what optimize_for_inference made of the
    converted model (eager and fused paths), with a portable copy where it needs the kernels."""
    import sepconv
    from sepconv import optimize as opt_pkg

    seen = {}
    real = opt_pkg.optimize_for_inference

    def spy(model, x, *args, **kwargs):
        seen["model"], seen["candidates"] = model, kwargs.get("candidates")
        seen["result"] = real(model, x, *args, **kwargs)
        return seen["result"]

    monkeypatch.setattr(opt_pkg, "optimize_for_inference", spy)
    out = tmp_path / "small.pt2"
    code, text, err = run(capsys, "convert", "digits_cnn", "--input", "2x1x16x16", "--rank", "2", "--output", str(out))
    assert code == 0, err
    fast = seen["result"]
    assert seen["candidates"] == ("eager", "fused")
    assert f"wrote {out} (optimized for inference, backend {fast.backend!r}" in text
    info = sepconv.load(out).info
    assert info["portable"] == info["needs_kernels"] == ("fused" in fast.backend)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(sepconv.load(out)(x), fast(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("argv,message", [
    (["convert", "mobilenet_v1:0.25", "--budget", "0.3"], "sepconv: error: --output: expected a path for the converted model"),
    (["convert", "digits_cnn", "--budget", "0.001", "--output", "x.pt"], "sepconv: error: budget: expected at least"),
    (["convert", "digits_cnn", "--budget", "0.5", "--calibrate", "-5", "--output", "x.pt"],
     "sepconv: error: --calibrate: expected a positive int (how many samples), got -5"),
    (["convert", "digits_cnn", "--budget", "0.5", "--calibrate", "0", "--output", "x.pt"],
     "sepconv: error: --calibrate: expected a positive int (how many samples), got 0"),
    (["convert", "digits_cnn", "--budget", "0.5", "--distill-epochs", "-1", "--output", "x.pt"],
     "sepconv: error: --distill-epochs: expected a non-negative int, got -1"),
    (["convert", "digits_cnn", "--output", "/no/such/dir/x.pt"], "sepconv: error: --output: directory of '/no/such/dir/x.pt' does not exist"),
])
def test_convert_errors(capsys, tmp_path, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith(message), err
    assert err.count("\n") == 1 and not (tmp_path / "x.pt").exists()


def test_bench_command(capsys):
    code, out, _ = run(capsys, "bench", "--input", "1x8x16x16", "--filters", "16", "--rounds", "2", "--json")
    assert code == 0
    r = json.loads(out)
    assert set(r["ms"]) == {"dense", "naive NCHW", "naive channels_last", "sepconv layer", "sepconv optimized", "depthwise only",
                            "pointwise GEMM only"}
    assert r["theoretical"] == pytest.approx((16 * 8 * 9) / (8 * 9 + 8 * 16))
    assert r["gemm_bound"] == pytest.approx(r["ms"]["naive channels_last"] / r["ms"]["pointwise GEMM only"], rel=0.02)  # ms rounded to 4 decimals
    code, out, _ = run(capsys, "bench", "--input", "1x8x16x16", "--filters", "16", "--rounds", "2")
    assert code == 0 and "pointwise GEMM only" in out and "a free depthwise plus the BLAS pointwise GEMM would give" in out
    code, _, err = run(capsys, "bench", "--input", "1x8x16", "--filters", "16")
    assert code == 2 and err.startswith("sepconv: error: --input: expected 4 sizes, got 3")


def test_missing_optional_dependency_is_one_line(capsys, monkeypatch):
    import sepconv.data

    def no_sklearn(*a, **k):
        raise ImportError("DigitsDataset needs scikit-learn: pip install scikit-learn")

    monkeypatch.setattr(sepconv.data.DigitsDataset, "__init__", no_sklearn)
    code, _, err = run(capsys, "convert", "digits_cnn", "--budget", "0.5", "--output", "x.pt")
    assert code == 2 and err.startswith("sepconv: error: DigitsDataset needs scikit-learn") and err.count("\n") == 1
