"""Running a benchmark modifies no tracked file unless asked (``--update-results``).

The measurements themselves are replaced by stubs: only where the results go is tested here.
"""

import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import _output  # noqa: E402
import conversion  # noqa: E402
import speed  # noqa: E402
import update_readme  # noqa: E402

TRACKED = [ROOT / "README.md", *sorted((ROOT / "benchmarks" / "results").glob("*.*"))]


def _digests() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in TRACKED}


@pytest.fixture
def latest(tmp_path, monkeypatch):
    """The default output folder, moved to a temporary one for the test."""
    monkeypatch.setattr(_output, "LATEST", str(tmp_path / "latest"))
    return tmp_path / "latest"


@pytest.fixture
def stub_speed(monkeypatch):
    monkeypatch.setattr(speed, "layer_rows", lambda *a, **k: [])
    monkeypatch.setattr(speed, "mobilenet_rows", lambda *a, **k: [])
    monkeypatch.setattr(speed, "filter_rows", lambda *a, **k: [])
    monkeypatch.setattr(speed, "markdown", lambda *a, **k: "Measured today.\n\nTargets:\n")


@pytest.fixture
def stub_conversion(monkeypatch):
    data = SimpleNamespace(tensors=lambda n=None: (torch.zeros(4, 1, 16, 16),))
    monkeypatch.setattr(conversion, "DigitsDataset", lambda *a, **k: data)
    for name in ("train", "distill"):
        monkeypatch.setattr(conversion, name, lambda *a, **k: None)
    monkeypatch.setattr(conversion, "evaluate", lambda *a, **k: 0.5)
    monkeypatch.setattr(conversion, "convert", lambda model, **k: (model, None))
    monkeypatch.setattr(conversion, "profile", lambda *a, **k: SimpleNamespace(macs=10, params=1))


@pytest.mark.parametrize("script", ["speed", "conversion"])
def test_a_plain_run_writes_only_to_the_untracked_default_folder(script, latest, stub_speed, stub_conversion):
    before = _digests()
    assert {"speed": speed, "conversion": conversion}[script].main(["--quick"]) == 0
    assert sorted(p.name for p in latest.iterdir()) == [f"{script}.json", f"{script}.md"]
    assert _digests() == before


@pytest.mark.parametrize("script", ["speed", "conversion"])
def test_output_names_the_folder(script, tmp_path, latest, stub_speed, stub_conversion):
    before = _digests()
    assert {"speed": speed, "conversion": conversion}[script].main(["--quick", "--output", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"{script}.json", f"{script}.md"]
    assert not latest.exists() and _digests() == before


def test_update_results_and_output_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        conversion.main(["--output", "x", "--update-results"])
    assert exc.value.code == 2
    assert "error: --output and --update-results: expected at most one of them, got both" in capsys.readouterr().err


def test_default_output_folder_is_ignored_by_git():
    assert Path(_output.LATEST) == ROOT / "benchmarks" / "results" / "latest"
    assert "benchmarks/results/latest/" in (ROOT / ".gitignore").read_text().splitlines()


def test_update_readme_only_writes_when_asked(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- conversion:start -->\nold\n<!-- conversion:end -->\n"
                      "<!-- speed:start -->\nold\n<!-- speed:end -->\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "conversion.md").write_text("| new conversion table |\n")
    (results / "speed.md").write_text("Measured today.\n\nTargets:\n| new speed table |\n")
    monkeypatch.setattr(update_readme, "README", str(readme))
    original = readme.read_text()

    assert update_readme.main(["--results", str(results)]) == 1  # out of date: shows the diff, writes nothing
    assert readme.read_text() == original and "+| new conversion table |" in capsys.readouterr().out

    assert update_readme.main(["--results", str(results), "--update-results"]) == 0
    assert readme.read_text() == (
        "a\n<!-- conversion:start -->\n| new conversion table |\n<!-- conversion:end -->\n<!-- speed:start -->\n"
        "Measured today.\n\nTargets:\n| new speed table |\n\nPer layer shape, batch and thread count: "
        "[benchmarks/results/speed.md](benchmarks/results/speed.md).\n<!-- speed:end -->\n")
    assert update_readme.main(["--results", str(results)]) == 0


def test_the_readme_tables_match_the_tracked_results():
    with open(update_readme.README) as f:
        readme = f.read()
    assert update_readme.updated_readme(str(ROOT / "benchmarks" / "results"), readme) == readme


@pytest.mark.parametrize("engine", ["ort_session", "openvino_session"])
def test_reference_engines_run_the_exported_model_in_float32(engine):
    """Both reference engines compute what the PyTorch model computes (float32: OpenVINO's default
    on AMX / AVX512-BF16 CPUs would be bfloat16, ~1e-2 off), at the thread count asked for."""
    pytest.importorskip({"ort_session": "onnxruntime", "openvino_session": "openvino"}[engine])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 20, 20)
    run = getattr(speed, engine)(speed.onnx_bytes(model, x), 1)
    with torch.no_grad():
        ref = model(x)
    got = torch.as_tensor(run(x.numpy()))
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_machine_names_the_cpu_and_its_vector_isa():
    text = speed.machine()
    assert "cores" in text and any(isa in text for isa in ("AVX-512", "AVX2", "AVX", "NEON", "SSE")), text


def test_conversion_speed_writes_its_table_to_the_untracked_folder(latest, monkeypatch):
    """benchmarks/conversion_speed.py with the measurements stubbed: rows become a markdown table
    of MAC and time ratios (a budget that cannot be met is a row saying why)."""
    import conversion_speed

    rows = [dict(model="ResNet-18", batch=1, cost="latency", budget=0.5, convert_seconds=1.0, macs_ratio=0.61,
                 output_error=0.1234, original_ms=10.0, converted_ms=5.2, measured_ratio=0.52, backend="fused",
                 predicted_ratio=0.49),
            dict(model="ResNet-18", batch=1, cost="macs", budget=0.33, error="budget: expected at least 0.4")]
    monkeypatch.setattr(conversion_speed, "networks", lambda quick: [("ResNet-18", None, torch.zeros(1, 3, 8, 8))])
    monkeypatch.setattr(conversion_speed, "points", lambda *a, **k: rows)
    before = _digests()
    assert conversion_speed.main(["--quick"]) == 0
    table = (latest / "conversion_speed.md").read_text()
    assert "| ResNet-18 | 1 | latency 0.5 | 0.61 | 0.52 | 0.49 | 0.1234 | 5.20 | 10.00 |" in table
    assert "| ResNet-18 | 1 | macs 0.33 | | | | budget: expected at least 0.4 | | |" in table
    assert _digests() == before


def _point(cost, t, e, model="ResNet-18", budget=0.5):
    return dict(model=model, batch=1, cost=cost, budget=budget, measured_ratio=t, output_error=e)


def test_conversion_speed_compares_the_curves_at_equal_measured_time():
    """Hand-computed: the latency curve's error interpolated at each MAC point's measured time."""
    import conversion_speed

    rows = [_point("latency", 0.75, 0.10), _point("latency", 0.55, 0.20), _point("latency", 0.25, 0.34),
            _point("macs", 0.65, 0.21, budget=0.5),  # latency there: 0.20 - 0.10 * 0.10 / 0.20 = 0.15
            _point("macs", 0.40, 0.25, budget=0.33),  # 0.34 - 0.14 * 0.15 / 0.30 = 0.27: higher
            _point("macs", 0.90, 0.05, budget=0.75),  # past the latency curve, more exact than all of it
            _point("macs", 0.95, 0.12, budget=0.8),  # past it, and the 0.75 point is faster and more exact
            _point("macs", 0.20, 0.30, budget=0.2),  # before it, and more exact than its fastest point
            _point("macs", 0.22, 0.40, budget=0.25)]  # before it, less exact than its fastest point
    got = [(c["budget"], None if c["latency_error"] is None else round(c["latency_error"], 6), c["lower"])
           for c in conversion_speed.dominance(rows)]
    assert got == [(0.5, 0.15, True), (0.33, 0.27, False), (0.75, None, None), (0.8, 0.10, True), (0.2, 0.34, False),
                   (0.25, None, None)]
    table = conversion_speed.dominance_markdown(conversion_speed.dominance(rows))
    assert "lower or equal in 2 of 4 comparisons (2 MAC point(s) outside the latency curve's times)" in table
    assert "| ResNet-18 | 1 | 0.33 | 0.40 | 0.2500 | 0.2700 | **no** |" in table


def test_rerunning_one_model_replaces_only_its_tracked_rows(monkeypatch, tmp_path):
    import json

    import conversion_speed

    monkeypatch.setattr(_output, "RESULTS", str(tmp_path))
    old = [_point("macs", 0.7, 0.2), _point("macs", 0.8, 0.1, model="ResNet-50", budget=0.75),
           _point("macs", 0.9, 0.3, model="digits CNN")]
    (tmp_path / "conversion_speed.json").write_text(json.dumps({"rows": old}))
    new = [_point("latency", 0.6, 0.15, model="ResNet-50")]
    assert conversion_speed.merged(new, ["resnet50"]) == [old[0], new[0], old[2]]
    # chosen budgets: only the points run are replaced, the model's other rows stay, in order
    point = _point("macs", 0.65, 0.25, model="ResNet-50", budget=0.5)
    assert conversion_speed.merged([point], ["resnet50"], points_only=True) == [old[0], old[1], point, old[2]]


@pytest.mark.parametrize("args", [["--costs", "latency"], ["--budgets", "0.5"]])
def test_rerunning_chosen_points_of_every_model_keeps_the_other_tracked_rows(monkeypatch, tmp_path, args):
    """Without --models, chosen costs or budgets replace only those points: the other rows stay."""
    import json

    import conversion_speed

    monkeypatch.setattr(_output, "RESULTS", str(tmp_path))
    monkeypatch.setattr(conversion_speed, "output_dir", lambda p, a: str(tmp_path))
    full = dict(macs_ratio=0.5, predicted_ratio=0.5, original_ms=10.0, converted_ms=5.0)
    old = [{**_point("macs", 0.7, 0.2), **full}, {**_point("latency", 0.6, 0.3, budget=0.75), **full}]
    (tmp_path / "conversion_speed.json").write_text(json.dumps({"rows": old}))
    new = [{**_point("latency", 0.5, 0.25), **full}]
    monkeypatch.setattr(conversion_speed, "networks", lambda quick: [("ResNet-18", None, torch.zeros(1, 3, 8, 8))])
    monkeypatch.setattr(conversion_speed, "points", lambda *a, **k: new)
    written = {}
    monkeypatch.setattr(conversion_speed, "write_results", lambda out, stem, data, table: written.update(data))
    assert conversion_speed.main([*args, "--batches", "1", "--update-results"]) == 0
    assert written["rows"] == [old[0], old[1], new[0]]


def test_rerunning_one_batch_of_a_model_keeps_its_other_batches_tracked_rows(monkeypatch, tmp_path):
    """--models resnet18 --batches 8: ResNet-18's batch-1 rows stay (a run that replaced all of
    the model's rows lost them)."""
    import json

    import conversion_speed

    monkeypatch.setattr(_output, "RESULTS", str(tmp_path))
    monkeypatch.setattr(conversion_speed, "output_dir", lambda p, a: str(tmp_path))
    full = dict(macs_ratio=0.5, predicted_ratio=0.5, original_ms=10.0, converted_ms=5.0)
    old = [{**_point("macs", 0.7, 0.2), **full}, {**_point("macs", 0.8, 0.3), **full, "batch": 8}]
    (tmp_path / "conversion_speed.json").write_text(json.dumps({"rows": old}))
    new = [{**_point("macs", 0.6, 0.25), **full, "batch": 8}]
    monkeypatch.setattr(conversion_speed, "networks",
                        lambda quick, only=None: [("ResNet-18", None, torch.zeros(1, 3, 8, 8))])
    monkeypatch.setattr(conversion_speed, "points", lambda *a, **k: new)
    written = {}
    monkeypatch.setattr(conversion_speed, "write_results", lambda out, stem, data, table: written.update(data))
    assert conversion_speed.main(["--models", "resnet18", "--batches", "8", "--update-results"]) == 0
    assert written["rows"] == [old[0], new[0]]
    assert written["meta"]["this_run"] == "the rows of cost macs and latency of ResNet-18 at batch 8"


@pytest.mark.parametrize("args,message", [
    (["--batches", "1,0"], "--batches: expected comma-separated positive ints, got '1,0'"),
    (["--batches", "x"], "--batches: expected comma-separated positive ints, got 'x'"),
    (["--budgets", "0.5,1.5"], "--budgets: expected comma-separated fractions in (0, 1], got '0.5,1.5'"),
    (["--budgets", ""], "--budgets: expected comma-separated fractions in (0, 1], got ''"),
    (["--models", ""], "--models: expected a comma-separated subset of resnet18, resnet50, mobilenetv2, digits, got ''"),
])
def test_conversion_speed_refuses_bad_numbers(capsys, args, message):
    import conversion_speed

    with pytest.raises(SystemExit) as exc:
        conversion_speed.main(args)
    assert exc.value.code == 2 and capsys.readouterr().err.strip().endswith(message)


def test_convert_time_table_shows_the_time_kept_of_latency_conversions():
    import convert_time

    meta = dict(date="today", cpu="a CPU", cores=2, vector_isa="AVX2", torch="2", threads=2, repeats=3)
    rows = [dict(task="convert resnet18", seconds=2.0, cpu_seconds=4.0, peak_rss_mb=1200, macs_ratio=0.5, load_before=0.1),
            dict(task="latency resnet18, new table", seconds=70.0, cpu_seconds=130.0, peak_rss_mb=1500, macs_ratio=0.37,
                 time_ratio=0.52, load_before=0.2)]
    lines = convert_time.markdown(meta, rows).splitlines()
    assert lines[2] == "| task | seconds | CPU seconds | target | peak RSS (MB) | MACs kept | time kept | load |"
    assert lines[4] == "| convert resnet18 | 2.00 | 4.00 | <= 3 s | 1200 | 50.0% |  | 0.1 |"
    assert lines[5] == "| latency resnet18, new table | 70.00 | 130.00 |  | 1500 | 37.0% | 52.0% | 0.2 |"
