"""The demo's figures, best-conversion choice and words, on synthetic results (fast, no training)."""

import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")

from sepconv._demo_latency import explain, grouped_stage
from sepconv._demo_plots import accuracy_figure, latency_figure, layer_error_figure, layer_order
from sepconv._demo_report import TIE_BREAK, best_conversion, best_sentence, calibration_notes, latency_lines
from sepconv.layers import BlueprintSeparableConv2d, SeparableConv2d

BASE = dict(acc=0.99, macs=12_000_000, ms=30.0)
TWIN = dict(acc=0.95, macs=1_500_000, ms=12.0)


def _layer(name, structure, rank, macs, error):
    return dict(name=name, structure=structure, rank=rank, macs=macs, error=error)


def _row(method, budget, distilled, err=0.1, macs=None, free=0.5, calibrated=0.98, err_free=0.5, err_cal=0.1,
         layers_free=(), layers_cal=()):
    return dict(method=method, budget=budget, macs=macs or int(budget * 12_000_000), free=free, calibrated=calibrated,
                distilled=distilled, err_free=err_free, err_calibrated=err_cal, err_distilled=err,
                layers_free=list(layers_free), layers_calibrated=list(layers_cal), ms=20.0 * budget)


def _results():
    return [_row(m, b, 0.99 - 0.001 * i - (0.01 if b == 0.25 else 0)) for b in (0.5, 0.25)
            for i, m in enumerate(("depthwise", "blueprint", "spatial", "auto"))]


# --- best conversion: a documented tie-break ------------------------------------------------------
def test_best_conversion_prefers_accuracy_then_lower_output_error():
    rows = [_row("depthwise", 0.25, 0.98, err=0.30), _row("blueprint", 0.25, 0.98, err=0.20),
            _row("spatial", 0.25, 0.97, err=0.01), _row("auto", 0.25, 0.98, err=0.25), _row("auto", 0.5, 0.99)]
    best, tied = best_conversion(rows, 0.25)
    assert best["method"] == "blueprint"
    assert [r["method"] for r in tied] == ["auto", "depthwise"]
    assert best_sentence(best, tied) == ("the best conversion is blueprint (98.00% after distillation, tied on accuracy "
                                         "with auto, depthwise; chosen by its lower output error, 0.2000 against "
                                         "0.2500, 0.3000)")


def test_best_conversion_ties_on_error_go_to_fewer_macs_then_method_order():
    rows = [_row("auto", 0.25, 0.98, err=0.2, macs=900), _row("spatial", 0.25, 0.98, err=0.2, macs=800)]
    best, tied = best_conversion(rows, 0.25)
    assert (best["method"], [r["method"] for r in tied]) == ("spatial", ["auto"])
    assert best_sentence(best, tied).endswith("chosen by equal output error and fewer MACs)")
    rows = [_row("auto", 0.25, 0.98, err=0.2, macs=800), _row("blueprint", 0.25, 0.98, err=0.2, macs=800)]
    for order in (rows, rows[::-1]):  # the input's order does not decide
        best, tied = best_conversion(order, 0.25)
        assert (best["method"], [r["method"] for r in tied]) == ("blueprint", ["auto"])
        assert best_sentence(best, tied).endswith("chosen by equal output error and MACs, by the method order)")
    assert "then fewer MACs, then the method order depthwise, blueprint, spatial, auto" in TIE_BREAK


def test_best_conversion_without_a_tie_says_nothing_about_ties():
    best, tied = best_conversion(_results(), 0.25)
    assert best["method"] == "depthwise" and tied == []
    assert best_sentence(best, tied) == "the best conversion is depthwise (98.00% after distillation)"
    with pytest.raises(ValueError, match=r"^budget: expected one of the demo's budgets, got 0.3$"):
        best_conversion(_results(), 0.3)


# --- calibrated errors higher than data-free ones are explained ----------------------------------
def test_calibration_notes_explain_each_layer_where_calibration_is_worse():
    free = [_layer("features.0", "dense", None, 100, 0.0), _layer("features.3", "spatial", 8, 500, 0.30),
            _layer("features.7", "blueprint", 2, 400, 0.20), _layer("features.10", "spatial", 4, 300, 0.40)]
    cal = [_layer("features.0", "dense", None, 100, 0.0), _layer("features.3", "spatial", 8, 500, 0.35),
           _layer("features.7", "blueprint", 2, 400, 0.25), _layer("features.10", "spatial", 2, 150, 0.50)]
    row = _row("auto", 0.5, 0.98, err_free=0.6, err_cal=0.2, layers_free=free, layers_cal=cal)
    notes = calibration_notes([row], 64)
    assert len(notes) == 3
    assert notes[0] == ("auto 50%, features.3: the calibrated layer's error is 0.350, higher than data-free (0.300), "
                        "with the same spatial@8: its last factor was fit by least squares on the 64 calibration "
                        "images, and the error shown is on one test image, which the fit did not see.")
    assert notes[1].startswith("auto 50%, features.7: the calibrated layer's error is 0.250, higher than data-free "
                               "(0.200), with the same blueprint@2: its last factor was refit to reproduce the original "
                               "layer's outputs from the converted model's own inputs, which carry the earlier layers' "
                               "errors")
    assert notes[1].endswith("the whole model's output error is 0.2000 calibrated against 0.6000 data-free.")
    assert notes[2] == ("auto 50%, features.10: the calibrated layer's error is 0.500, higher than data-free (0.400), "
                        "because calibration allocates the MACs by each layer's effect on the outputs and gave this "
                        "layer fewer (150 for spatial@2 against 300 for spatial@4), spending them where they lower "
                        "the error more.")
    row["layers_calibrated"][3] = _layer("features.10", "blueprint", 3, 350, 0.50)  # another structure, not fewer MACs
    assert calibration_notes([row], 64)[2] == (
        "auto 50%, features.10: the calibrated layer's error is 0.500, higher than data-free (0.400), with blueprint@3 "
        "instead of spatial@4: calibration chose it by the layer's output error on the calibration images (and refit "
        "it to the converted model's own inputs), while the error shown is on one test image's inputs to the original "
        "layer.")
    assert calibration_notes([row], 64, methods=()) == []  # per layer only for the plotted method


def test_calibration_notes_cover_a_whole_model_worse_after_calibration_and_nothing_else():
    better = _row("spatial", 0.5, 0.98, err_free=0.5, err_cal=0.1, free=0.9, calibrated=0.97)
    worse = _row("depthwise", 0.25, 0.9, err_free=0.1, err_cal=0.2, free=0.95, calibrated=0.93)
    notes = calibration_notes([better, worse], 256)
    assert notes == ["depthwise 25%: calibrated, the model's output error is 0.2000 and its accuracy 93.00%, against "
                     "0.1000 and 95.00% data-free: calibration fits each layer, in turn, to the original layer's "
                     "outputs on the 256 calibration images, which does not guarantee the smallest error of the whole "
                     "model on the test images."]
    assert calibration_notes([better], 256) == []


# --- figures ---------------------------------------------------------------------------------------
def test_layer_error_figure_keeps_model_order_and_shows_dense_layers_as_dense():
    rows = [("features.0", "dense", None, 0.0), ("features.3", "spatial", 8, 0.3), ("features.7", "dense", None, 0.0),
            ("features.10", "blueprint", 2, 0.4)]
    series = {"auto 50% data-free": rows, "auto 50% calibrated": [(n, s, r, e / 2) for n, s, r, e in rows]}
    assert layer_order(series) == ["features.0", "features.3", "features.7", "features.10"]
    fig = layer_error_figure(series)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["features.0", "features.3", "features.7", "features.10"]
    assert ax.get_xlabel().startswith("layer, in the model's order") and "dense" in ax.get_xlabel()
    assert ax.get_ylabel().startswith("relative output error of the layer")
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["dense", "spatial@8", "dense", "blueprint@2"] * 2
    heights = [p.get_height() for p in ax.patches]
    assert heights == [0.0, 0.3, 0.0, 0.4, 0.0, 0.15, 0.0, 0.2]


def _budget_labels(ax) -> list:
    return sorted(t.get_text() for t in ax.texts if t.get_text().endswith("%") and not t.get_text().startswith("twin"))


def test_accuracy_figure_fits_each_panel_and_labels_every_point_with_its_budget():
    results = _results()
    for r in results:
        r["free"] = 0.1 + 0.5 * r["budget"]
    fig = accuracy_figure(results, BASE, TWIN, n_test=450)
    assert fig._suptitle.get_text().startswith("test accuracy on 450 images moves in steps of 0.22%: equal accuracies "
                                               "overlap")
    free, cal, dist = fig.axes
    for ax in (cal, dist):  # the conversions (97.7-99%) and the original (99%), not a 10-100 range
        lo, hi = ax.get_ylim()
        assert 96 < lo < 97.7 and 99 < hi < 100.5
        twin = [t.get_text() for t in ax.texts if t.get_text().startswith("twin")]
        assert twin == ["twin 12%: 95.0% (below the axis)"]  # outside the fitted axis: drawn at its edge, said
    assert free.get_ylim()[1] - free.get_ylim()[0] > 20
    assert [t.get_text() for t in free.texts if t.get_text().startswith("twin")] == ["twin 12%"]
    for ax in fig.axes:
        assert _budget_labels(ax) == sorted(["50%"] * 4 + ["25%"] * 4 + ["100%"])
        assert ax.get_xlabel().startswith("MACs per image (millions)") and ax.get_ylabel() == "test accuracy (%)"


def test_latency_figure_plots_accuracy_against_measured_time_per_method():
    rows = [dict(model="original", eager=40.0, optimized=30.0), dict(model="auto 50%", eager=35.0, optimized=20.0)]
    fig = latency_figure(rows, _results(), BASE, TWIN, 64)
    bars, view = fig.axes
    assert "batch of 64" in bars.get_xlabel()
    lines = {l.get_label(): l for l in view.get_lines()}
    assert list(lines) == ["depthwise", "blueprint", "spatial", "auto", "original", "separable twin (scratch)"]
    assert list(lines["auto"].get_xdata()) == [5.0, 10.0]  # each conversion's own measured ms, sorted
    assert view.get_xlabel().startswith("measured time after optimize_for_inference (ms, batch of 64)")
    assert _budget_labels(view) == sorted(["50%"] * 4 + ["25%"] * 4 + ["100%"])


# --- latency rows, each explained ------------------------------------------------------------------
def _lat(model, macs, optimized, batch1, convs=5, **kw):
    return dict(model=model, macs=macs, eager=2 * optimized, optimized=optimized, batch1=batch1, backend="eager",
                convs=convs, **kw)


def test_explain_says_faster_or_slower_and_why():
    original = _lat("original", 12_000_000, 30.0, 1.0)
    assert explain(original, original, 64) == (
        "The reference: 5 dense convolutions, 12,000,000 MACs per image, 30.00 ms per batch of 64 on the eager path; "
        "at batch 1 one image costs 2.1x its share of a batch, the rest being per-call overhead.")
    fast = _lat("spatial 25%", 3_000_000, 15.0, 1.5, convs=8)
    assert explain(fast, original, 64) == (
        "2.00x faster than the optimized original with 4.0x fewer MACs (eager path); at batch 1 it takes 1.50x the "
        "original's time: one 16x16 image is so little arithmetic that its 8 convolution calls (the original: 5) "
        "dominate.")
    slow = _lat("blueprint 25%", 3_000_000, 45.0, 0.9, slowest=dict(
        name="features.7", structure="blueprint", rank=4, dense_ms=1.0, new_ms=6.0, why="it is grouped"))
    assert explain(slow, original, 64) == (
        "1.50x slower than the optimized original despite 4.0x fewer MACs: features.7 (blueprint@4) alone takes "
        "6.00 ms (optimized) against 1.00 ms for the dense convolution it replaced, because it is grouped.")
    slow["slowest"].update(new_ms=1.05)  # within 10% of the dense layer: the row says none saves much
    assert explain(slow, original, 64) == (
        "1.50x slower than the optimized original despite 4.0x fewer MACs: no converted layer alone is clearly slower "
        "than the dense one it replaced, and the one saving least, features.7 (blueprint@4), takes 1.05 ms (optimized) "
        "against 1.00 ms (it is grouped); the rest is lost between the layers: its 5 convolutions (the original: 5) and "
        "the tensors between the factors cost more than the saved MACs at this batch size.")
    slow["slowest"] = None
    assert explain(slow, original, 64).endswith(
        ": its 5 convolutions (the original: 5) and the tensors between the factors cost more than the saved MACs at "
        "this batch size.")


def test_explain_names_the_fused_kernels_of_a_faster_row():
    original = _lat("original", 12_000_000, 30.0, 1.0)
    fast = _lat("blueprint 50%", 6_000_000, 15.0, 0.9, kernels={"fused blueprint kernel": 2, "fused stem-conv kernel": 1})
    fast["backend"] = "fused+torchscript"
    assert explain(fast, original, 64) == (
        "2.00x faster than the optimized original with 2.0x fewer MACs (fused+torchscript path, 2 layers on the fused "
        "blueprint kernel).")
    fast["kernels"]["fused depthwise + pointwise kernel"] = 1
    assert explain(fast, original, 64).endswith(
        "(fused+torchscript path, 2 layers on the fused blueprint kernel and 1 layer on the fused depthwise + pointwise "
        "kernel).")


def test_fused_layers_counts_kernels_in_modules_and_torchscript_graphs():
    from sepconv._demo_latency import fused_layers

    from sepconv import _fused

    if _fused.load() is None:
        pytest.skip("the C++ kernels are not available here")
    from sepconv.optimize import FusedBlueprintConv2d, FusedSeparableConv2d

    torch.manual_seed(0)
    model = nn.Sequential(FusedBlueprintConv2d(BlueprintSeparableConv2d(8, 8, 3, padding=1, rank=2).eval(), 1),
                          FusedSeparableConv2d(SeparableConv2d(8, 8, 3, padding=1).eval(), 0),
                          FusedBlueprintConv2d(BlueprintSeparableConv2d(8, 8, 3, padding=1, rank=3).eval(), 0))
    expected = {"fused depthwise + pointwise kernel": 1, "fused blueprint kernel": 2}
    assert fused_layers(model) == expected
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(model.eval(), torch.randn(1, 8, 6, 6)))
    assert fused_layers(traced) == expected
    assert fused_layers(nn.Sequential(nn.Conv2d(3, 3, 3))) == {}


def test_slow_reason_says_what_the_optimized_layer_runs_on():
    from sepconv._demo_latency import slow_reason

    row = dict(structure="blueprint", rank=4)
    layer = BlueprintSeparableConv2d(32, 32, 3, rank=4)
    assert slow_reason(row, layer, layer, 0.61) == (
        "at blueprint@4 it keeps 61% of the dense convolution's MACs, and its 128->32 stage is a grouped convolution "
        "summing 4 channels per group, for which PyTorch has no fast kernel on this CPU")
    spatial = dict(structure="spatial", rank=20)
    from sepconv.layers import SpatiallySeparableConv2d

    sp = SpatiallySeparableConv2d(32, 32, 3, rank=20)
    assert slow_reason(spatial, sp, sp, 0.83) == (
        "at spatial@20 it keeps 83% of the dense convolution's MACs, in 2 convolution calls instead of one")


def test_layer_macs_counts_every_convolution_of_a_layer():
    from sepconv._demo_latency import layer_macs

    x = torch.randn(4, 8, 10, 10)
    assert layer_macs(nn.Conv2d(8, 16, 3, padding=1), x) == 16 * 8 * 9 * 100
    # pointwise 8 -> 32 on 100 pixels, then the grouped 3x3 (2 inputs per output) on 64 pixels
    assert layer_macs(BlueprintSeparableConv2d(8, 16, 3, rank=2), x) == 32 * 8 * 100 + 16 * 2 * 9 * 64


def test_grouped_stage_names_the_slow_grouped_convolutions_only():
    assert grouped_stage(BlueprintSeparableConv2d(32, 32, 3, rank=4)) == (
        "its 128->32 stage is a grouped convolution summing 4 channels per group, for which PyTorch has no fast "
        "kernel on this CPU")
    assert "depth multiplier 4" in grouped_stage(SeparableConv2d(32, 32, 3, depth_multiplier=4))
    assert grouped_stage(SeparableConv2d(32, 32, 3)) == ""
    assert grouped_stage(BlueprintSeparableConv2d(32, 32, 3)) == ""
    assert grouped_stage(nn.Conv2d(8, 8, 3)) == ""


def test_latency_lines_show_every_row_with_its_sentence_and_the_accuracy_view():
    original = _lat("original", 12_000_000, 30.0, 1.0, why="The reference.")
    row = _lat("auto 50%", 6_000_000, 20.0, 1.2, why="Faster.")
    lines = latency_lines(dict(rows=[original, row], batch=64, rounds=7, demo_threads=2, load=3.5, cores=2,
                               results=_results()))
    text = "\n".join(lines)
    assert "on **one thread** (the rest of the demo used 2)" in text
    assert "The machine's load average was 3.5 on 2 cores while timing." in text
    assert "| auto 50% | 6,000,000 | 1.200 | 40.00 | 20.00 | eager | 1.50x | Faster. |" in text
    assert "| auto 25% | 3,000,000 | 97.70% | 0.1000 | 5.00 | 6.00x |" in text


def test_slowest_layer_times_the_optimized_layers_and_says_why(monkeypatch):
    """The converted layer is compared with the dense conv it replaced as the optimized rows run them
    (both through optimize_for_inference), with its share of the dense MACs and the reason."""
    from sepconv import _demo_latency as L
    from sepconv.layers import BlueprintSeparableConv2d as Blueprint

    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()).eval()
    converted = nn.Sequential(Blueprint.from_dense(original[0], rank=2), nn.ReLU()).eval()
    timed = []

    def stub(calls, rounds, warmup=1):
        timed.extend(calls)
        return {key: (2.0 if key[1] == "new" else 1.0) for key in calls}

    monkeypatch.setattr(L, "interleaved", stub)
    layers = [dict(name="0", structure="blueprint", rank=2)]
    slow = L.slowest_layer(original, converted, layers, torch.randn(4, 8, 10, 10), rounds=1)
    assert timed == [("0", "dense"), ("0", "new")]
    assert (slow["name"], slow["dense_ms"], slow["new_ms"]) == ("0", 1.0, 2.0)
    share = (8 * 32 + 16 * 2 * 9) / (16 * 8 * 9)  # pointwise 8 -> 32, grouped 3x3 with 2 inputs, vs dense 8 -> 16
    assert slow["why"].startswith(f"at blueprint@2 it keeps {share:.0%} of the dense convolution's MACs, and ")
    assert L.slowest_layer(original, original, [dict(name="0", structure="dense", rank=None)], torch.randn(2, 8, 6, 6), 1) is None


def test_explain_names_the_layers_run_as_their_dense_convolution():
    original = _lat("original", 12_000_000, 30.0, 1.0)
    row = _lat("depthwise 50%", 6_000_000, 25.0, 0.9, densified=["features.3"])
    assert explain(row, original, 64) == (
        "1.20x faster than the optimized original with 2.0x fewer MACs (eager path); 1 of its separable layers runs as "
        "the dense convolution its factors compose to (features.3: the same outputs, measured faster here than the "
        "factors).")


def test_data_free_points_sit_at_their_own_macs():
    """A data-free conversion may choose other structures than the calibrated one: the data-free
    panel plots it at its own MACs, the other panels at the calibrated model's."""
    results = _results()
    results[0]["macs_free"] = 7_000_000  # depthwise 50%: 6,000,000 MACs calibrated
    fig = accuracy_figure(results, BASE, TWIN)
    free, cal, _ = fig.axes
    xs = {l.get_label(): list(l.get_xdata()) for l in free.get_lines()}
    assert xs["depthwise"] == [3.0, 7.0]
    assert {l.get_label(): list(l.get_xdata()) for l in cal.get_lines()}["depthwise"] == [3.0, 6.0]


def test_summary_gives_a_data_free_model_its_own_macs():
    import io

    from rich.console import Console

    from sepconv.demo import _summary

    results = _results()
    for r in results:
        r.update(params=r["macs"] // 100, macs_free=r["macs"], params_free=r["macs"] // 100)
    results[0].update(macs_free=7_000_000, params_free=71_000)
    lines = _summary(Console(file=io.StringIO(), width=200), dict(BASE, params=120_000), dict(TWIN, params=15_000), results)
    rows = [line for line in lines if line.startswith("| converted: depthwise")]
    assert rows[0].split(" | ")[4] == "50.00% (7,000,000 MACs, 71,000 params)"
    assert rows[1].split(" | ")[4] == "50.00%"  # the same allocation: nothing added
    assert lines[-1] == ("MACs and params: the calibrated (and distilled) model's; a data-free conversion that chose "
                         "other structures or ranks gives its own in brackets.")
