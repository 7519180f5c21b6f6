"""The user's own model and data through the command: convert a custom class defined in a file with
its own calibration data (.pt, .npy, a folder of images), save, load the archive in another
process and folder (without the model's code), replay the recipe onto the user's class; optimize
and load; one-line errors. scikit-learn is made unimportable for the commands run here: a
non-digits model must not need it.

Float32 tolerances: the loaded archive (a torch.export graph) against the same weights run eagerly:
rtol = atol = 1e-5; an optimized (fused) model against the original: relative error <= 1e-4, the
bound optimize_for_inference itself checks.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import sepconv
from sepconv.cli import main

USER_NET = textwrap.dedent("""
    import torch
    from torch import nn

    class UserNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = y + self.conv2(y)
            return self.head(y.mean((2, 3)))

    def make():
        torch.manual_seed(0)
        model = UserNet()
        with torch.no_grad():
            model.bn1.running_mean.uniform_(-0.5, 0.5)
            model.bn1.running_var.uniform_(0.5, 2.0)
        return model.eval()
""")

SHAPE = (2, 3, 10, 10)


@pytest.fixture
def user_dir(tmp_path):
    """A folder with the user's model file (and a sitecustomize that makes scikit-learn unimportable)."""
    (tmp_path / "usernet.py").write_text(USER_NET)
    shim = tmp_path / "no_sklearn"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['sklearn'] = None\n")
    return tmp_path


def _user_module(user_dir):
    spec = importlib.util.spec_from_file_location("usernet_for_test", user_dir / "usernet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sepconv(user_dir, *argv, cwd=None):
    """The installed command in a fresh process, scikit-learn unimportable."""
    env = dict(os.environ, PYTHONPATH=str(user_dir / "no_sklearn"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sepconv.cli", *argv], cwd=cwd or user_dir, env=env,
                          capture_output=True, text=True, timeout=600)


def _load_elsewhere(archive, x, cwd, prelude=""):
    """``sepconv.load(archive)(x)`` in a fresh process run from ``cwd``; returns (output, stderr)."""
    torch.save(x, cwd / "x.pt")
    code = (f"import sys, torch, sepconv\n{prelude}\n"
            "assert 'usernet' not in sys.modules\n"
            f"model = sepconv.load({str(archive)!r})\n"
            "with torch.no_grad():\n"
            "    torch.save(model(torch.load('x.pt')), 'y.pt')\n"
            "print(model.info['program'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return torch.load(cwd / "y.pt"), proc.stdout.strip(), proc.stderr


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _write_images(folder, n):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (14, 12, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")


def _expected_images(folder):
    """The folder's images as the command should read them: RGB, bilinear to 10x10, in [0, 1]."""
    from PIL import Image

    out = []
    for name in sorted(os.listdir(folder)):
        with Image.open(folder / name) as im:
            out.append(np.asarray(im.convert("RGB").resize((10, 10), Image.BILINEAR), dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("kind", ["pt", "npy", "images"])
def test_convert_a_custom_class_with_own_data_and_load_it_elsewhere(user_dir, tmp_path_factory, kind):
    torch.manual_seed(1)
    data = torch.randn(24, 3, 10, 10)
    if kind == "pt":  # a dict: the inputs under 'inputs', labels ignored
        torch.save({"inputs": data, "labels": torch.arange(24)}, user_dir / "cal.pt")
        path = "cal.pt"
    elif kind == "npy":
        np.save(user_dir / "cal.npy", data.numpy())
        path = "cal.npy"
    else:
        _write_images(user_dir / "images", 6)
        data = _expected_images(user_dir / "images")
        path = "images"
    proc = _sepconv(user_dir, "convert", "usernet.py:make", "--input", "2x3x10x10", "--budget", "0.6",
                    "--calibration-data", path, "--output", "small.pt2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["macs_after"] <= 0.6 * report["macs_before"]
    assert report["batchnorms"] == {"bn1": "folded into 'conv1'"}
    if len(data) >= 8:  # the last quarter is held out: the errors are measured on it, the rest is fit on
        data = data[len(data) - len(data) // 4:]
        where = f"on {len(data)} held-out samples of --calibration-data (not used for fitting)."
    else:
        where = (f"on the {len(data)} samples of --calibration-data (in-sample: the same samples the layers were fit "
                 f"on; with 8 or more, a quarter is held out).")
    assert report["message"].endswith(f"Model output relative error {report['output_error']:.4f} (and the layers' "
                                      f"output errors) {where}")

    user = _user_module(user_dir)
    original = user.make()
    mine = sepconv.apply_recipe(user.UserNet(), user_dir / "small.recipe.pt").eval()  # a fresh instance
    assert type(mine) is user.UserNet and isinstance(mine.bn1, torch.nn.Identity)
    with torch.no_grad():
        # the report's error is the converted model's on the user's data, against the original
        assert report["output_error"] == pytest.approx(_rel(mine(data), original(data)), rel=1e-4, abs=1e-7)
        x = torch.randn(5, 3, 10, 10)  # another batch size than --input's
        expected = mine(x)
    elsewhere = tmp_path_factory.mktemp("production")  # the model file is not importable here
    got, program, _ = _load_elsewhere(user_dir / "small.pt2", x, elsewhere)
    assert program == "program.pt2"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_distillation_on_own_data_reports_the_distilled_numbers(user_dir):
    torch.manual_seed(2)
    data = torch.randn(32, 3, 10, 10)
    torch.save(data, user_dir / "cal.pt")
    proc = _sepconv(user_dir, "convert", "usernet.py:make", "--input", "2x3x10x10", "--rank", "1",
                    "--calibration-data", "cal.pt", "--distill-epochs", "2", "--lr", "1e-2", "--output", "d.pt2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    user = _user_module(user_dir)
    original, distilled = user.make(), sepconv.apply_recipe(user.UserNet(), user_dir / "d.recipe.pt").eval()
    data = data[24:]  # the errors are on the held-out last quarter (distillation fit on the first 24)
    with torch.no_grad():
        assert report["output_error"] == pytest.approx(_rel(distilled(data), original(data)), rel=1e-4)
        # per layer: the distilled layer's dense kernel against conv2's own (independent dense reference)
        row = next(r for r in report["layers"] if r["name"] == "conv2")
        assert row["weight_error"] == pytest.approx(_rel(distilled.conv2.weight, original.conv2.weight), rel=1e-6)
        h = torch.relu(original.bn1(original.conv1(data)))  # conv2's input in the original, on the held-out data
        expected = torch.nn.functional.conv2d(h.double(), original.conv2.weight.double(), original.conv2.bias.double(),
                                              padding=1)
        assert row["output_error"] == pytest.approx(_rel(distilled.conv2(h), expected), rel=1e-4)
    assert re.search(r"Distilled for 2 epoch\(s\) on 24 samples: model output error \d\.\d{4} -> \d\.\d{4}\. "
                     r"|Distillation \(2 epoch\(s\), --lr 0\.01\) made the model output error worse", report["message"])
    assert "on 8 held-out samples of --calibration-data (not used for fitting)." in report["message"]


def test_optimize_round_trip_and_the_portable_fallback(user_dir, tmp_path_factory):
    from sepconv import _fused

    assert _fused.load() is not None, f"the fused kernels failed to build: {_fused.error()}"
    (user_dir / "sepnet.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        import sepconv

        class SepNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.sep = sepconv.SeparableConv2d(16, 32, 3, padding=1, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
                self.bn = nn.BatchNorm2d(32)
                self.fc = nn.Linear(32, 10)

            def forward(self, x):
                return self.fc(torch.relu(self.bn(self.sep(x))).mean((2, 3)))

        def make():
            torch.manual_seed(0)
            return SepNet().eval()
    """))
    proc = _sepconv(user_dir, "optimize", "sepnet.py:make", "--input", "1x16x24x24", "--rounds", "2",
                    "--output", "fast.pt2")
    assert proc.returncode == 0, proc.stderr
    assert "wrote fast.pt2 (load it anywhere with sepconv.load" in proc.stdout
    spec = importlib.util.spec_from_file_location("sepnet_for_test", user_dir / "sepnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = torch.randn(3, 16, 24, 24)
    with torch.no_grad():
        expected = module.make()(x)
    elsewhere = tmp_path_factory.mktemp("production")
    got, program, _ = _load_elsewhere(user_dir / "fast.pt2", x, elsewhere)
    assert program == "program.pt2" and _rel(got, expected) <= 1e-4
    if sepconv.load(user_dir / "fast.pt2").info["needs_kernels"]:  # the fused path was chosen: kernels gone
        no_kernels = "from sepconv import _fused\n_fused._state.update(module=None, error='OSError: no compiler')"
        got, program, err = _load_elsewhere(user_dir / "fast.pt2", x, elsewhere, prelude=no_kernels)
        assert program == "portable.pt2" and _rel(got, expected) <= 1e-4
        assert "the fused C++ kernels cannot be built here (OSError: no compiler); running the portable program" in err


def test_save_refuses_a_fused_program_without_portable_where_kernels_are_missing(tmp_path, monkeypatch):
    from sepconv import _fused

    assert _fused.load() is not None, f"the fused kernels failed to build: {_fused.error()}"
    model = torch.nn.Sequential(sepconv.SeparableConv2d(16, 32, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 16, 24, 24)
    fast = sepconv.optimize_for_inference(model, x, rounds=1, candidates=("fused",))
    meta = sepconv.save(fast, tmp_path / "f.pt2", x)
    assert meta["needs_kernels"] and not meta["portable"]
    monkeypatch.setattr(_fused, "load", lambda: None)
    monkeypatch.setattr(_fused, "error", lambda: "OSError: no compiler")
    with pytest.raises(RuntimeError) as info:
        sepconv.load(tmp_path / "f.pt2")
    assert str(info.value) == (f"sepconv.load: {str(tmp_path / 'f.pt2')!r} runs the fused C++ kernels, which cannot be "
                               "built here (OSError: no compiler), and holds no portable program; save it again with "
                               "portable=, or install a C++ compiler")


def test_apply_recipe_refuses_a_model_it_does_not_fit(user_dir):
    user = _user_module(user_dir)
    model = user.make()
    converted, report = sepconv.convert(model, budget=0.6, example_input=torch.randn(*SHAPE))
    from sepconv.serialize import make_recipe

    recipe = make_recipe(model, converted, report.batchnorms)
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError) as info:
        sepconv.apply_recipe(other, recipe)
    assert str(info.value) == "recipe: does not fit this model: it has no layer 'bn1' (a folded BatchNorm)"
    wider = user.UserNet()
    wider.conv2 = torch.nn.Conv2d(8, 8, 5, padding=2)
    with pytest.raises(ValueError) as info:
        sepconv.apply_recipe(wider, recipe)
    assert str(info.value).startswith("recipe: does not fit this model: its weights differ (shapes: conv2.")
    with pytest.raises(ValueError) as info:
        sepconv.apply_recipe(user.UserNet(), {"format": "something else"})
    assert str(info.value) == ("recipe: expected a recipe saved by sepconv (sepconv convert --recipe), got a dict "
                               "without format 'sepconv-recipe'")
    bad = dict(recipe, state_dict={**recipe["state_dict"], "head.bias": torch.full((5,), float("nan"))})
    with pytest.raises(ValueError) as info:
        sepconv.apply_recipe(user.UserNet(), bad)
    assert str(info.value) == "recipe: expected finite weights, got NaN or Inf in 'head.bias'"
    with pytest.raises(TypeError) as info:
        sepconv.apply_recipe("not a model", recipe)
    assert str(info.value).startswith("model: expected an nn.Module")


def test_load_refuses_files_it_did_not_write(tmp_path):
    (tmp_path / "x.pt2").write_bytes(b"not a zip")
    with pytest.raises(ValueError) as info:
        sepconv.load(tmp_path / "x.pt2")
    assert str(info.value) == (f"path: {str(tmp_path / 'x.pt2')!r} is not a model saved by sepconv (sepconv "
                               "convert/optimize --output, sepconv.save): not a zip archive")
    with pytest.raises(ValueError) as info:
        sepconv.load(tmp_path / "missing.pt2")
    assert str(info.value) == f"path: {str(tmp_path / 'missing.pt2')!r} not found"


@pytest.fixture
def workdir(user_dir, monkeypatch):
    monkeypatch.chdir(user_dir)
    torch.save(torch.randn(4, 3, 10, 10), "ok.pt")
    torch.save(torch.randn(4, 3, 12, 12), "wrong.pt")
    nan = torch.randn(4, 3, 10, 10)
    nan[2, 0, 0, 0] = float("nan")
    torch.save(nan, "nan.pt")
    os.mkdir("empty")
    os.mkdir("adir")
    with open("notes.txt", "w") as f:
        f.write("hello")
    return user_dir


CONVERT = ["convert", "usernet.py:make", "--input", "2x3x10x10", "--budget", "0.6"]


@pytest.mark.parametrize("argv, message", [
    ([*CONVERT, "--calibration-data", "wrong.pt", "--output", "o.pt2"],
     "--calibration-data: expected samples of shape 3x10x10 (--input without its batch size), got 4x3x12x12 in 'wrong.pt'"),
    ([*CONVERT, "--calibration-data", "nan.pt", "--output", "o.pt2"],
     "--calibration-data: expected finite values, got NaN or Inf in 'nan.pt' (sample 2)"),
    ([*CONVERT, "--calibration-data", "empty", "--output", "o.pt2"],
     "--calibration-data: no images (.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp) in the folder 'empty'"),
    ([*CONVERT, "--calibration-data", "missing.pt", "--output", "o.pt2"], "--calibration-data: 'missing.pt' not found"),
    ([*CONVERT, "--calibration-data", "notes.txt", "--output", "o.pt2"],
     "--calibration-data: cannot read 'notes.txt': expected a tensor (or a dict or list of tensors) saved with "
     "torch.save, a .npy array or a folder of images"),
    ([*CONVERT, "--calibrate", "8", "--output", "o.pt2"],
     "--calibrate: needs inputs of this model; expected --calibration-data PATH (a tensor file, .npy array or folder "
     "of images), got none"),
    ([*CONVERT, "--distill-epochs", "1", "--output", "o.pt2"],
     "--distill-epochs: needs inputs of this model; expected --calibration-data PATH (a tensor file, .npy array or "
     "folder of images), got none"),
    ([*CONVERT, "--mean", "0.5", "--output", "o.pt2"],
     "--mean/--std: normalize --calibration-data; expected --calibration-data PATH, got none"),
    ([*CONVERT, "--calibration-data", "ok.pt", "--mean", "0.1,0.2", "--output", "o.pt2"],
     "--mean: expected 1 or 3 values (--input has 3 channels), got 2 in '0.1,0.2'"),
    ([*CONVERT, "--calibration-data", "ok.pt", "--std", "0,1,1", "--output", "o.pt2"],
     "--std: expected positive finite numbers, got '0,1,1'"),
    ([*CONVERT, "--output", "o.pt2", "--recipe", "o.pt2"], "--recipe: expected a file other than --output, got 'o.pt2'"),
    ([*CONVERT, "--output", "o.pt2", "--recipe", "adir"], "--recipe: expected a file name, got the directory 'adir'"),
    ([*CONVERT, "--output", "nowhere/o.pt2"], "--output: directory of 'nowhere/o.pt2' does not exist"),
    ([*CONVERT, "--output", "o.pt2", "--recipe", "/proc/r.pt"], "--recipe: cannot write '/proc/r.pt': No such file or directory"),
    (["optimize", "usernet.py:make", "--input", "1x3x10x10"], "--output: expected a path for the optimized model, got none"),
    (["optimize", "usernet.py:make", "--input", "1x3x10x10", "--output", "adir"],
     "--output: expected a file name, got the directory 'adir'"),
    (["optimize", "usernet.py:make", "--input", "1x3x10x10", "--rounds", "0", "--output", "o.pt2"],
     "--rounds: expected an int from 1 to 1000, got 0"),
    # an --input the model cannot take: said so, with the model's own error
    (["convert", "usernet.py:make", "--input", "2x3x10", "--budget", "0.5", "--output", "o.pt2"],
     "--input: the model fails on an input of shape 2x3x10: RuntimeError: Given groups=1, weight of size [8, 3, 3, 3], "
     "expected input[1, 2, 3, 10] to have 3 channels, but got 2 channels instead"),
    (["optimize", "usernet.py:make", "--input", "2x3x10", "--output", "o.pt2"],
     "--input: the model fails on an input of shape 2x3x10: RuntimeError: Given groups=1, weight of size [8, 3, 3, 3], "
     "expected input[1, 2, 3, 10] to have 3 channels, but got 2 channels instead"),
    ([*CONVERT, "--output", "notes.txt/o.pt2"],
     "--output: 'notes.txt' is a file, not a directory, so 'notes.txt/o.pt2' cannot be written"),
])
def test_mistakes_are_one_line(workdir, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"sepconv: error: {message}\n"
    assert not os.path.exists("o.pt2") and not os.path.exists("o.recipe.pt")


def test_outputs_are_checked_before_the_model_is_loaded(workdir, capsys, monkeypatch):
    import sepconv.cli

    monkeypatch.setattr(sepconv.cli, "load_model", lambda spec: pytest.fail("the model was loaded"))
    assert main([*CONVERT, "--output", "o.pt2", "--recipe", "nowhere/r.pt"]) == 2
    assert capsys.readouterr().err == "sepconv: error: --recipe: directory of 'nowhere/r.pt' does not exist\n"
    assert main(["optimize", "usernet.py:make", "--output", "adir"]) == 2
    assert capsys.readouterr().err == "sepconv: error: --output: expected a file name, got the directory 'adir'\n"


def test_a_model_torch_export_cannot_save_is_refused_before_the_conversion(workdir, capsys, monkeypatch):
    (workdir / "branchy.py").write_text(textwrap.dedent("""
        from torch import nn

        class Branchy(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3)

            def forward(self, x):
                return self.conv(x) if float(x.sum()) > 0 else -self.conv(x)

        def make():
            return Branchy()
    """))
    monkeypatch.setattr(importlib.import_module("sepconv.convert"), "convert", lambda *a, **k: pytest.fail("converted"))
    assert main(["convert", "branchy.py:make", "--input", "1x3x10x10", "--budget", "0.5", "--output", "o.pt2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sepconv: error: model: cannot be saved as a self-contained program: torch.export failed (")
    assert err.count("\n") == 1 and not os.path.exists("o.pt2")


def test_a_loaded_program_refuses_other_sizes_clearly(tmp_path):
    """Any batch size runs; other sizes than the saved example's are refused with a ValueError
    naming both (torch.export's guard raised a bare AssertionError)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 16, 16)
    sepconv.save(sepconv.optimize_for_inference(model, x, rounds=1, candidates=("eager",)), tmp_path / "m.pt2", x)
    loaded = sepconv.load(tmp_path / "m.pt2")
    with torch.no_grad():
        assert loaded(torch.randn(5, 3, 16, 16)).shape == (5, 8, 16, 16)
        for bad in (torch.randn(1, 3, 20, 16), torch.randn(1, 4, 16, 16), torch.randn(3, 16, 16)):
            with pytest.raises(ValueError) as info:
                loaded(bad)
            assert str(info.value) == (f"input: expected shape (*, 3, 16, 16) (any batch size; the program in "
                                       f"{str(tmp_path / 'm.pt2')!r} was saved for these sizes: convert or optimize "
                                       f"again with an example of the size you need), got {tuple(bad.shape)}")


@pytest.mark.parametrize("candidates", [("eager",), ("fused",)])
def test_a_loaded_program_refuses_another_dtype_clearly(tmp_path, candidates):
    """An input of another dtype than the saved example's is a TypeError saying which (through the
    fused kernels it was their RuntimeError, 'fused_dwpw: x: expected a 4-D float32 CPU tensor')."""
    model = torch.nn.Sequential(sepconv.SeparableConv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 16, 16)
    fast = sepconv.optimize_for_inference(model, x, rounds=1, candidates=candidates)
    sepconv.save(fast, tmp_path / "m.pt2", x, portable=model)
    loaded = sepconv.load(tmp_path / "m.pt2")
    for dtype in (torch.float64, torch.int64):
        with pytest.raises(TypeError) as info:
            loaded(x.to(dtype))
        assert str(info.value) == (f"input: expected dtype torch.float32 (the example input's, which the program in "
                                   f"{str(tmp_path / 'm.pt2')!r} was saved for), got {dtype}")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("where", ["current folder", "model file's folder"])
def test_the_sepconv_command_loads_a_saved_model_whose_class_is_in_a_user_file(tmp_path, where):
    """``torch.save(model)`` pickles the class by its module's name: the installed ``sepconv``
    command (whose sys.path, unlike ``python -m``'s, holds neither folder) finds that module in the
    current folder or next to the model file, as the script that saved the model did."""
    exe = Path(sys.executable).with_name("sepconv")
    if not exe.exists():
        pytest.skip("the sepconv command is not installed next to this Python")
    models = tmp_path / "models"
    models.mkdir()
    (models / "mynet_for_cli_test.py").write_text(
        "from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 8, 3)\n\n    def forward(self, x):\n        return self.conv(x)\n")
    subprocess.run([sys.executable, "-c", "import torch, mynet_for_cli_test; torch.save(mynet_for_cli_test.Net(), 'net.pt')"],
                   cwd=models, check=True, timeout=600)
    cwd, path = (models, "net.pt") if where == "current folder" else (tmp_path, os.path.join("models", "net.pt"))
    done = subprocess.run([str(exe), "profile", path, "--input", "1x3x16x16"], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert "42,336" in done.stdout  # 14 x 14 outputs x 8 channels x 27 taps
