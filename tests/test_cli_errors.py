"""CLI mistakes: each prints exactly one ``sepconv: error: ...`` line and exits 2, before any long work.

Plus the exits that are not mistakes: Ctrl-C (130, from the first moment) and a reader that goes
away (``| head``: 141, quietly).
"""

import os
import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

import sepconv.cli
from sepconv.cli import main

SEPCONV = os.path.join(os.path.dirname(sys.executable), "sepconv")  # the installed console script

USER_FILES = {
    "net.py": (
        "import torch.nn as nn\n"
        "def good():\n    return nn.Sequential(nn.Conv2d(3, 4, 3))\n"
        "def boom():\n    raise RuntimeError('boom\\nand a second line')\n"
        "def leave():\n    import sys\n    sys.exit(3)\n"
        "def number():\n    return 5\n"
        "def needs_args(width):\n    return nn.Conv2d(3, width, 3)\n"
        "def chatty():\n    print('hello from the factory')\n    return nn.Sequential(nn.Conv2d(3, 4, 3))\n"
    ),
    "exits_on_import.py": "import sys\nsys.exit(4)\n",
    "bad_import.py": "import not_a_module_sepconv_xyz\n",
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with user files of every kind, as the current directory."""
    for name, text in USER_FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "folder.py").mkdir()
    (tmp_path / "adir").mkdir()
    (tmp_path / "text.txt").write_text("hello\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save(nn.Conv2d(3, 3, 3).state_dict(), tmp_path / "sd.pt")
    (tmp_path / "out" / "report.md").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "archive.pt2", "w") as z:  # what sepconv.save writes, as far as the CLI looks
        z.writestr("sepconv-model.json", '{"format": "sepconv-model", "version": 1}')
    # a whole model whose class lives in a module that is not importable where it is read
    (tmp_path / "gonemod_sepconv.py").write_text("import torch.nn as nn\nclass Net(nn.Sequential):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gonemod_sepconv

    torch.save(gonemod_sepconv.Net(nn.Conv2d(3, 4, 3)), tmp_path / "gone.pt")
    del sys.modules["gonemod_sepconv"]
    (tmp_path / "gonemod_sepconv.py").unlink()
    monkeypatch.chdir(tmp_path)
    return tmp_path


OUT = ["--output", "x.pt"]
CASES = [
    # model specs: user files, built-in names, saved files
    (["profile", "net.py:boom"], "model: boom() in 'net.py' failed: RuntimeError: boom"),
    (["profile", "net.py:leave"], "model: leave() in 'net.py' failed: it called sys.exit(3)"),
    (["profile", "net.py:needs_args"],
     "model: needs_args() in 'net.py' failed: TypeError: needs_args() missing 1 required positional argument: 'width'"),
    (["profile", "net.py:number"], "model: 'net.py:number' returned int, expected an nn.Module"),
    (["profile", "net.py:missing"], "model: 'net.py' has no callable 'missing'"),
    (["profile", "net.py"], "model: expected FILE.py:FACTORY (the function that builds the model), got 'net.py'"),
    (["profile", "exits_on_import.py:make"], "model: could not import 'exits_on_import.py': it called sys.exit(4)"),
    (["profile", "bad_import.py:make"],
     "model: could not import 'bad_import.py': ModuleNotFoundError: No module named 'not_a_module_sepconv_xyz'"),
    (["profile", "folder.py:make"], "model: 'folder.py' is not a file"),
    (["profile", "adir"], "model: 'adir' is a directory, expected a file saved with torch.save(model, path)"),
    (["profile", "list.pt"], "model: 'list.pt' holds a list, expected a whole nn.Module saved with torch.save(model, path)"),
    (["profile", "sd.pt", "--input", "1x3x8x8"],
     "model: 'sd.pt' holds a OrderedDict, expected a whole nn.Module saved with torch.save(model, path)"),
    (["profile", "empty.pt"], "model: could not read 'empty.pt' with torch.load: EOFError: Ran out of input"),
    (["profile", "gone.pt"], "model: could not read 'gone.pt' with torch.load: ModuleNotFoundError: No module named "
                             "'gonemod_sepconv' (the model's class must be importable: it is looked for in the current "
                             "folder and the model file's folder; add the folder of its module to PYTHONPATH)"),
    (["optimize", "archive.pt2", "--input", "1x3x8x8", *OUT],
     "model: 'archive.pt2' is a program saved by sepconv (convert/optimize --output), optimized for inference already: "
     "run it with sepconv.load; convert and optimize need the model's modules (a built-in name, FILE.py:FACTORY, or a "
     "torch.save'd model; for a converted one, sepconv.apply_recipe on your model class)"),
    (["profile", "mobilenet_v1:inf"], "model: expected a positive number up to 8 after ':' in 'mobilenet_v1:inf', got 'inf'"),
    (["profile", "mobilenet_v1:"], "model: expected a number after ':' in 'mobilenet_v1:', got ''"),
    (["profile", "mobilenet_v1:nan"], "model: expected a positive number up to 8 after ':' in 'mobilenet_v1:nan', got 'nan'"),
    (["profile", "mobilenet_v1:-1"], "model: expected a positive number up to 8 after ':' in 'mobilenet_v1:-1', got '-1'"),
    (["profile", "mobilenet_v1:0"], "model: expected a positive number up to 8 after ':' in 'mobilenet_v1:0', got '0'"),
    (["profile", "mobilenet_v1:1e9"], "model: expected a positive number up to 8 after ':' in 'mobilenet_v1:1e9', got '1e9'"),
    (["profile", "mobilenet_v1:abc"], "model: expected a number after ':' in 'mobilenet_v1:abc', got 'abc'"),
    (["profile", "digits_cnn:2.5"], "model: expected a positive int up to 1024 after ':' in 'digits_cnn:2.5', got '2.5'"),
    (["profile", "net.py:good"], "--input: expected an input size like 1x3x224x224 for this model, got none"),
    (["profile", "mobilenet_v1", "--input=-1x3x8x8"], "--input: expected positive sizes, got '-1x3x8x8'"),
    (["profile", "mobilenet_v1", "--input", "1x3x8.5x8"], "--input: expected sizes separated by 'x' like 1x3x224x224, got '1x3x8.5x8'"),
    # explain
    (["explain", "--input", "15x15x3", "--filters", "0"], "out_channels: expected a positive int, got 0"),
    (["explain", "--input", "15x15x3", "--filters", "3", "--stride", "0"], "stride: expected 2 positive ints, got 0"),
    (["explain", "--input", "15x15x3", "--filters", "3", "--kernel", "0"], "--kernel: expected positive sizes, got '0'"),
    (["explain", "--input", "15x15x3", "--filters", "3", "--depth-multiplier", "0"],
     "depth_multiplier: expected a positive int, got 0"),
    (["explain", "--input", "15x15x3", "--filters", "3", "--padding", "-1"],
     "--padding: expected 'valid', 'same' or a non-negative int, got '-1'"),
    (["explain", "--input", "15x15x3x1", "--filters", "3"], "--input: expected 3 sizes, got 4 in '15x15x3x1'"),
    # convert: output checks come before loading the model (see test_output_is_checked_before_the_model)
    (["convert", "digits_cnn", "--budget", "0.5", "--output", "adir"], "--output: expected a file name, got the directory 'adir'"),
    (["convert", "digits_cnn", "--budget", "0.5", "--output", "/proc/x.pt"], "--output: cannot write '/proc/x.pt': No such file or directory"),
    (["convert", "digits_cnn", "--budget", "0.5", "--output", "nowhere/x.pt"], "--output: directory of 'nowhere/x.pt' does not exist"),
    (["convert", "digits_cnn", "--budget", "0.5", "--output", "text.txt/x.pt"],
     "--output: 'text.txt' is a file, not a directory, so 'text.txt/x.pt' cannot be written"),
    (["convert", "digits_cnn", "--budget", "0.5", "--output", "text.txt/sub/x.pt"],
     "--output: 'text.txt' is a file, not a directory, so 'text.txt/sub/x.pt' cannot be written"),
    (["optimize", "digits_cnn", "--output", "text.txt/x.pt"],
     "--output: 'text.txt' is a file, not a directory, so 'text.txt/x.pt' cannot be written"),
    (["convert", "digits_cnn", "--budget", "0.5", "--lr", "nan", *OUT], "--lr: expected a positive number, got nan"),
    (["convert", "digits_cnn", "--budget", "0.5", "--lr", "-1", *OUT], "--lr: expected a positive number, got -1.0"),
    (["convert", "digits_cnn", "--budget", "0.5", "--input", "1x1x16", *OUT],
     "--input: calibration/distillation data are 2-D images; expected BxCxHxW, got (1, 1, 16)"),
    # bench
    (["bench", "--input", "1x8x16x16", "--filters", "16", "--threads", "0"], "--threads: expected an int from 1 to 4096, got 0"),
    (["bench", "--input", "1x8x16x16", "--filters", "16", "--threads", "99999999999"],
     "--threads: expected an int from 1 to 4096, got 99999999999"),
    (["profile", "mobilenet_v1", "--input", "1x3x99999999999x99999999999"],
     "--input: expected sizes up to 2,147,483,647 and at most 1,099,511,627,776 values in all, got '1x3x99999999999x99999999999'"),
    (["profile", "mobilenet_v1", "--input", ""], "--input: expected sizes separated by 'x' like 1x3x224x224, got ''"),
    (["profile", "nope"], "model: expected a built-in name (conv_mobilenet_v1, digits_cnn, digits_separable_cnn, mobilenet_v1; "
                          "each takes an optional :WIDTH), FILE.py:FACTORY or a torch.save file, got 'nope'"),
    (["profile", "missing.pt"], "model: file 'missing.pt' not found (expected a model saved with torch.save, a built-in "
                                "name or FILE.py:FACTORY)"),
    (["convert", "models/net.pth", "--budget", "0.5", *OUT],
     "model: file 'models/net.pth' not found (expected a model saved with torch.save, a built-in name or FILE.py:FACTORY)"),
    (["bench", "--input", "1x8x16x16", "--filters", "0"], "--filters: expected a positive int, got 0"),
    (["bench", "--input", "1x8x16x16", "--filters", "16", "--rounds", "0"], "--rounds: expected a positive int, got 0"),
    (["bench", "--input", "1x8x16x12", "--filters", "16"], "--input: expected a square input (H == W), got 16x12"),
    # demo: checked before the training starts
    (["demo", "--output", "text.txt"], "--output: expected a directory, got the file 'text.txt'"),
    (["demo", "--output", "/proc/demo"], "--output: cannot create the directory '/proc/demo': No such file or directory"),
    (["demo", "--output", "text.txt/sub"], "--output: cannot create the directory 'text.txt/sub': Not a directory"),
    (["demo", "--output", "out"], "--output: cannot write 'out/report.md': it is a directory"),
    (["demo", "--seed", "-1"], "--seed: expected a non-negative int below 2**63, got -1"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_mistake_is_one_line_and_status_2(workdir, capsys, argv, message):
    code = main(argv)
    out, err = capsys.readouterr()
    assert (code, err) == (2, f"sepconv: error: {message}\n")
    assert not (workdir / "x.pt").exists()
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".")) == []  # no probe left behind


def test_the_table_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("argv,last_line", [
    (["convert", "digits_cnn", "--method", "foo"],
     "sepconv: error: argument --method: invalid choice: 'foo' (choose from auto, depthwise, blueprint, spatial) (see 'sepconv convert --help')"),
    (["bench", "--input", "1x8x16x16", "--filters", "16", "--threads", "two"],
     "sepconv: error: argument --threads: invalid int value: 'two' (see 'sepconv bench --help')"),
    (["profile"], "sepconv: error: the following arguments are required: model (see 'sepconv profile --help')"),
    (["explain", "--filters", "3"], "sepconv: error: the following arguments are required: --input (see 'sepconv explain --help')"),
    (["convert", "digits_cnn", "--budget", "0.5", "--rank", "2"], "sepconv: error: argument --rank: not allowed with argument --budget (see 'sepconv convert --help')"),
    (["--nope"], "sepconv: error: the following arguments are required: command (see 'sepconv --help')"),
    # numbers out of range are refused when the command line is read, before the model is loaded
    (["convert", "digits_cnn", "--budget", "0"],
     "sepconv: error: argument --budget: expected a fraction of the MACs (of the time with --cost latency) in (0, 1], got '0' (see 'sepconv convert --help')"),
    (["convert", "digits_cnn", "--budget", "2"],
     "sepconv: error: argument --budget: expected a fraction of the MACs (of the time with --cost latency) in (0, 1], got '2' (see 'sepconv convert --help')"),
    (["convert", "digits_cnn", "--budget", "nan"],
     "sepconv: error: argument --budget: expected a fraction of the MACs (of the time with --cost latency) in (0, 1], got 'nan' (see 'sepconv convert --help')"),
    (["convert", "digits_cnn", "--budget", "abc"],
     "sepconv: error: argument --budget: expected a fraction of the MACs (of the time with --cost latency) in (0, 1], got 'abc' (see 'sepconv convert --help')"),
    (["convert", "digits_cnn", "--tolerance", "nan"],
     "sepconv: error: argument --tolerance: expected a relative error in [0, 1), got 'nan' (see 'sepconv convert --help')"),
    (["convert", "digits_cnn", "--tolerance", "1"],
     "sepconv: error: argument --tolerance: expected a relative error in [0, 1), got '1' (see 'sepconv convert --help')"),
    (["convert", "digits_cnn", "--rank", "0"],
     "sepconv: error: argument --rank: expected a positive int, got '0' (see 'sepconv convert --help')"),
])
def test_usage_errors_from_argparse_are_one_line_exit_2(capsys, argv, last_line):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1
    assert err.splitlines()[-1].replace("'auto', 'depthwise', 'blueprint', 'spatial'", "auto, depthwise, blueprint, spatial") \
        == last_line


def test_output_is_checked_before_the_model_is_loaded_or_converted(workdir, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("long work started before the output was checked")

    monkeypatch.setattr(sepconv.cli, "load_model", must_not_run)
    assert main(["convert", "digits_cnn", "--budget", "0.5", "--output", "adir"]) == 2
    assert capsys.readouterr().err == "sepconv: error: --output: expected a file name, got the directory 'adir'\n"


def test_demo_output_is_checked_before_the_demo_starts(workdir, capsys, monkeypatch):
    import sepconv.demo

    monkeypatch.setattr(sepconv.demo, "run_demo", lambda args: pytest.fail("the demo started"))
    assert main(["demo", "--output", "text.txt"]) == 2
    assert capsys.readouterr().err == "sepconv: error: --output: expected a directory, got the file 'text.txt'\n"


def test_a_good_factory_still_works(workdir, capsys):
    assert main(["profile", "net.py:good", "--input", "1x3x10x10", "--json"]) == 0
    assert '"macs": 6912' in capsys.readouterr().out


def test_a_factory_that_prints_does_not_corrupt_json(workdir, capsys):
    """The user's own prints go to stderr: stdout stays the JSON document asked for."""
    import json

    assert main(["profile", "net.py:chatty", "--input", "1x3x10x10", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["macs"] == 6912 and err == "hello from the factory\n"


def test_ctrl_c_during_a_command_is_one_line_and_130(capsys, monkeypatch):
    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(sepconv.cli, "load_model", interrupted)
    assert main(["profile", "mobilenet_v1"]) == 130
    assert capsys.readouterr() == ("", "sepconv: interrupted\n")


class _ClosedPipe:
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_stops_quietly_with_141(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["explain", "--input", "15x15x3", "--filters", "10"]) == 141
    assert capsys.readouterr().err == ""


# ---- real processes: the installed console script ----

def _script(*argv: str) -> list[str]:
    if not os.path.exists(SEPCONV):
        pytest.skip("the sepconv console script is not installed next to this Python")
    return [SEPCONV, *argv]


@pytest.mark.parametrize("fmt", ["--markdown", "--json", None])
def test_piping_into_a_reader_that_stops_early_is_quiet(fmt):
    argv = _script("profile", "mobilenet_v1", *([fmt] if fmt else []))
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # like `| head` that has already stopped reading: every write fails with EPIPE
    err = child.stderr.read().decode()
    child.stderr.close()
    assert (child.wait(), err) == (141, "")


_CTRL_C_AT_TORCH_IMPORT = """
import os, signal, sys

# as in a terminal: a process started in the background by a non-interactive shell inherits an
# ignored SIGINT, and Python then installs no handler for it
signal.signal(signal.SIGINT, signal.default_int_handler)


class CtrlCAtTorch:
    # a real SIGINT to this process the moment anything starts importing torch
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, CtrlCAtTorch())
"""


def test_ctrl_c_while_torch_is_still_importing_is_one_line_and_130(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(_CTRL_C_AT_TORCH_IMPORT)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = subprocess.run(_script("profile", "mobilenet_v1", "--json"), capture_output=True, text=True, env=env, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (130, "", "sepconv: interrupted\n")


def test_sys_exit_in_a_factory_is_an_error_not_a_silent_exit(tmp_path):
    (tmp_path / "net.py").write_text(USER_FILES["net.py"])
    run = subprocess.run(_script("profile", "net.py:leave"), capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert (run.returncode, run.stderr) == (2, "sepconv: error: model: leave() in 'net.py' failed: it called sys.exit(3)\n")
