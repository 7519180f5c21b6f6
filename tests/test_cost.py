"""Cost formulas against hand-derived counts, FlopCounterMode, and the papers' numbers."""

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import sepconv
from sepconv import cost as C
from sepconv.models import conv_mobilenet_v1, mobilenet_v1


def flop_counter_flops(model, shape):
    """FLOPs of convolutions + matmuls from PyTorch's own counter, on real tensors."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(shape))
    return counter.get_total_flops()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---- the seeds' examples (hand-derived: kernel w x kernel h x channels x kernels x slides) ----
def test_seed_15x15x3_depthwise_separable():
    c = C.compare((3, 15, 15), 10, 3, padding="valid")
    assert c.rows["standard"]["macs"] == 3 * 3 * 3 * 10 * 13 * 13 == 45_630
    assert c.rows["depthwise separable"]["macs"] == 9_633
    sep = C.separable_conv_cost((1, 3, 15, 15), 10, 3)
    assert [p.macs for _, p in sep.parts] == [13 * 13 * 3 * 3 * 3 * 1, 13 * 13 * 10 * 1 * 1 * 3] == [4_563, 5_070]
    assert c.rows["depthwise separable"]["ratio"] == pytest.approx(1 / 10 + 1 / 9)
    assert c.rows["depthwise separable"]["closed_form"] == pytest.approx(1 / 10 + 1 / 9)
    # a seed writes "13 x 13 = 225": it is 169, which is what the 5,070 above uses
    assert 13 * 13 == 169 and 5_070 == 169 * 30


def test_seed_spatial_15x15x1():
    std = C.conv_cost((1, 1, 15, 15), 1, 3)
    sp = C.spatially_separable_conv_cost((1, 1, 15, 15), 1, 3)
    assert std.macs == 3 * 3 * 1 * 1 * 13 * 13 == 1_521
    v, h = sp.parts[0][1], sp.parts[1][1]
    assert v.macs == 3 * 1 * 1 * 1 * 13 * 15 == 585 and v.output_shape == (1, 1, 13, 15)
    # the 1x3 pass slides over the 13x15 intermediate: 13 x 13 positions, not the seed's 15 x 13
    assert h.macs == 1 * 3 * 1 * 1 * 13 * 13 == 507
    assert sp.macs == 1_092


def test_seed_7x7x3_to_256_consistent_numbers():
    valid = C.compare((3, 7, 7), 256, 3, padding="valid")
    same = C.compare((3, 7, 7), 256, 3, padding="same")
    assert valid.rows["standard"]["macs"] == 5 * 5 * 3 * 3 * 3 * 256 == 172_800
    assert valid.rows["depthwise separable"]["macs"] == 5 * 5 * 3 * 3 * 3 + 5 * 5 * 3 * 256 == 675 + 19_200
    assert same.rows["standard"]["macs"] == 7 * 7 * 3 * 3 * 3 * 256 == 338_688
    assert same.rows["depthwise separable"]["macs"] == 7 * 7 * 3 * 3 * 3 + 7 * 7 * 3 * 256 == 1_323 + 37_632
    # the seed's 23,169 = 3,969 (7x7 'same' depthwise, one factor 3 too many) + 19,200 (5x5 'valid' pointwise)
    assert 7 * 7 * 3 * 3 * 3 * 3 + 5 * 5 * 3 * 256 == 23_169
    for c in (valid, same):
        assert c.rows["depthwise separable"]["ratio"] == pytest.approx(1 / 256 + 1 / 9)


def test_explain_text_shows_the_seeds_derivation():
    text = C.explain((3, 15, 15), 10, 3, padding="valid")
    assert "kernel width x kernel height x channels x kernels x vertical slides x horizontal slides" in text
    assert "= 3 x 3 x 3 x 10 x 13 x 13 = 45,630" in text
    assert "4,563 + 5,070 = 9,633" in text
    assert "1/N + 1/K^2 = 1/10 + 1/9 = 21.11%" in text
    text = C.explain((1, 15, 15), 1, 3, padding="valid", spatial=True)
    assert "1,521" in text and "585 + 507 = 1,092" in text
    assert "585 + 585 = 1,170" in text  # the seed's count, explained


# ---- formulas against FlopCounterMode and numel(), fuzzed ----
@given(
    st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(1, 4),
    st.integers(1, 3), st.integers(1, 2), st.sampled_from(["valid", "same", 1]), st.integers(1, 2),
)
def test_conv_cost_matches_flop_counter(n, b, c, mult, k, s, d, padding, g):
    groups = g if c % g == 0 else 1
    out = mult * groups
    size = (k - 1) * d + 1 + 5
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n]
    shape = (b, c, *[size] * n)
    if padding == "same" and s > 1:
        layer = sepconv.DepthwiseConv2d(c, k, mult, s, "same", d) if n == 2 else None
        if layer is None:
            return
        cost = C.depthwise_conv_cost(shape, k, mult, s, "same", d)
    else:
        layer = conv(c, out, k, s, padding, d, groups)
        cost = C.conv_cost(shape, out, k, s, padding, d, groups)
    assert cost.flops == flop_counter_flops(layer, shape)
    assert cost.params == n_params(layer)
    assert cost.output_shape == tuple(layer(torch.randn(shape)).shape)


@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.integers(0, 1))
def test_transposed_conv_cost_matches_flop_counter(c, out, k, s, p, op):
    op = min(op, s - 1)
    layer = nn.ConvTranspose2d(c, out, k, s, p, op)
    shape = (2, c, 5, 6)
    if any((i - 1) * s - 2 * p + k + op < 1 for i in shape[2:]):
        return
    cost = C.conv_cost(shape, out, k, s, p, transposed=True, output_padding=op)
    assert cost.flops == flop_counter_flops(layer, shape)
    assert cost.output_shape == tuple(layer(torch.randn(shape)).shape)
    assert cost.params == n_params(layer)


@pytest.mark.parametrize("layer,fn", [
    (sepconv.SeparableConv2d(4, 8, 3, stride=2, padding="same", depth_multiplier=2),
     lambda s: C.separable_conv_cost(s, 8, 3, 2, "same", depth_multiplier=2)),
    (sepconv.SeparableConv1d(4, 8, 5, padding=2), lambda s: C.separable_conv_cost(s, 8, 5, padding=2)),
    (sepconv.SeparableConv3d(4, 8, 3), lambda s: C.separable_conv_cost(s, 8, 3)),
    (sepconv.BlueprintSeparableConv2d(4, 8, 3, rank=2, padding="same", stride=2),
     lambda s: C.blueprint_separable_conv_cost(s, 8, 3, 2, "same", rank=2)),
    (sepconv.SpatiallySeparableConv2d(4, 8, (3, 5), rank=3, stride=(2, 1), padding="same"),
     lambda s: C.spatially_separable_conv_cost(s, 8, (3, 5), 3, (2, 1), "same")),
    (sepconv.SpatiallySeparableConv2d(4, 8, 3, rank=4, groups=2, padding=1, dilation=2),
     lambda s: C.spatially_separable_conv_cost(s, 8, 3, 4, 1, 1, 2, groups=2)),
    (sepconv.DepthwiseConv2d(4, 4, 3, stride=3, padding="same"), lambda s: C.depthwise_conv_cost(s, 4, 3, 3, "same")),
    (nn.Linear(4, 7), lambda s: C.linear_cost(s, 7)),
])
def test_layer_formulas_match_flop_counter_and_profile(layer, fn):
    n = getattr(layer, "_n", 1 if isinstance(layer, nn.Linear) else 2)
    shape = (2, 4, *[11] * n) if not isinstance(layer, nn.Linear) else (3, 5, 4)
    cost = fn(shape)
    assert cost.flops == flop_counter_flops(layer, shape)
    assert cost.params == n_params(layer)
    assert cost.output_shape == tuple(layer(torch.randn(shape)).shape)
    assert C.profile(layer, shape).macs == cost.macs


def test_bytes():
    c = C.conv_cost((2, 3, 8, 8), 4, 3, padding=1)
    assert c.output_bytes() == 2 * 4 * 8 * 8 * 4
    assert c.output_bytes(torch.bfloat16) == 2 * 4 * 8 * 8 * 2
    assert c.param_bytes(torch.float64) == (4 * 3 * 9 + 4) * 8


# ---- MobileNetV1: the paper's tables ----
def test_mobilenet_v1_table1_and_table2():
    report = C.profile(mobilenet_v1(), (1, 3, 224, 224))
    assert report.macs == 568_740_352
    assert report.flops == 2 * 568_740_352
    assert report.params == 4_231_976
    shares = {k: v["macs_share"] for k, v in report.by_type().items()}
    # Table 2: 94.86% / 3.06% / 1.19% (a transposition of 1.91%) / 0.18%
    assert round(100 * shares["conv 1x1"], 2) == 94.86
    assert round(100 * shares["depthwise conv"], 2) == 3.06
    assert round(100 * shares["conv"], 2) == 1.91
    assert round(100 * shares["fully connected"], 2) == 0.18
    pshares = {k: v["params_share"] for k, v in report.by_type().items()}
    assert abs(100 * pshares["conv 1x1"] - 74.59) < 0.05 and abs(100 * pshares["fully connected"] - 24.33) < 0.05
    assert round(100 * pshares["depthwise conv"], 2) == 1.06 and round(100 * pshares["conv"], 2) == 0.02


@pytest.mark.parametrize("alpha,macs_m,params_m", [(0.75, 325, 2.6), (0.5, 149, 1.3), (0.25, 41, 0.5)])
def test_mobilenet_v1_table6_width(alpha, macs_m, params_m):
    report = C.profile(mobilenet_v1(alpha), (1, 3, 224, 224))
    assert int(report.macs / 1e6) == macs_m
    assert round(report.params / 1e6, 1) == params_m


@pytest.mark.parametrize("res,macs_m", [(192, 418), (160, 290), (128, 186)])
def test_mobilenet_v1_table7_resolution(res, macs_m):
    # the paper truncates to whole millions (290.68M is printed as 290)
    assert int(C.profile(mobilenet_v1(), (1, 3, res, res)).macs / 1e6) == macs_m


def test_conv_mobilenet_table4():
    report = C.profile(conv_mobilenet_v1(), (1, 3, 224, 224))
    assert abs(report.macs / 1e6 - 4866) / 4866 < 1e-3
    assert round(report.params / 1e6, 1) == 29.3


class _Functional(nn.Module):
    """Calls F.conv2d itself: profile must still count it and attribute it to this module."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = torch.nn.functional.conv2d(x, self.w, padding=1)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("make,shape", [
    (lambda: mobilenet_v1(0.25, num_classes=10), (2, 3, 64, 64)),
    (lambda: conv_mobilenet_v1(0.25, num_classes=10), (2, 3, 32, 32)),
    (lambda: nn.Sequential(sepconv.SeparableConv2d(3, 8, 3, stride=2, padding="same", norm_layer=nn.BatchNorm2d),
                           sepconv.BlueprintSeparableConv2d(8, 8, 5, rank=2, padding=2),
                           sepconv.SpatiallySeparableConv2d(8, 8, 3, rank=4, padding="same"),
                           sepconv.DepthwiseConv2d(8, 3, 2), nn.ConvTranspose2d(16, 4, 2, 2),
                           nn.Flatten(), nn.LazyLinear(5)), (2, 3, 17, 17)),
    (_Functional, (2, 3, 9, 9)),
    (lambda: nn.Sequential(sepconv.SeparableConv1d(4, 8, 3), nn.Conv1d(8, 8, 3, groups=2)), (2, 4, 20)),
    (lambda: nn.Sequential(sepconv.SeparableConv3d(4, 8, 3), sepconv.BlueprintSeparableConv3d(8, 4, 3)), (1, 4, 7, 7, 7)),
])
def test_profile_equals_flop_counter_and_numel(make, shape):
    torch.manual_seed(0)
    model = make()
    model(torch.randn(shape))  # materialize lazy layers
    report = C.profile(model, shape)
    assert 2 * report.macs == flop_counter_flops(model, shape)
    assert report.params == n_params(model)
    assert sum(r.macs for r in report.layers) == report.macs


class _VectorProducts(nn.Module):
    """Multiply-adds through the ops FlopCounterMode does not count: a matrix times a vector (mv,
    addmv), a dot product, addbmm."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4))
        self.v = nn.Parameter(torch.randn(6))
        self.b = nn.Parameter(torch.randn(2, 4, 5))

    def forward(self, x):  # x: (3, 4)
        h = x @ self.w.t()  # mm: 3 * 4 * 6
        y = h @ self.v  # mv: 3 * 6
        z = torch.addmv(self.v.new_zeros(6), self.w, x[0])  # 6 * 4
        d = torch.dot(self.v, self.v)  # 6
        e = torch.addbmm(x.new_zeros(3, 5), x.expand(2, 3, 4), self.b)  # 2 * 3 * 4 * 5
        return y.sum() + z.sum() + d + e.sum()


@pytest.mark.parametrize("make,shape,expected", [
    # nn.Bilinear: one multiply-add per sample, output feature and pair of input features
    (lambda: nn.Bilinear(5, 7, 3), [(4, 5), (4, 7)], 4 * 3 * 5 * 7),
    (lambda: nn.Bilinear(5, 7, 3, bias=False), [(2, 6, 5), (2, 6, 7)], 2 * 6 * 3 * 5 * 7),
    (_VectorProducts, (3, 4), 3 * 4 * 6 + 3 * 6 + 6 * 4 + 6 + 2 * 3 * 4 * 5),
])
def test_profile_counts_bilinear_and_vector_products(make, shape, expected):
    """Hand-derived counts: these ops used to count 0 MACs (as FlopCounterMode still does)."""
    torch.manual_seed(0)
    model = make()
    report = C.profile(model, shape)
    assert report.macs == expected
    assert report.params == n_params(model)


def test_profile_rows_and_renderings():
    model = mobilenet_v1(0.25, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = C.profile(model, (1, 3, 128, 128), name="mnv1")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    assert next(model.parameters()).device.type == "cpu"
    rows = {r.name: r for r in report.layers}
    dw = rows["features.1.0.depthwise"]
    assert dw.type == "Conv2d" and dw.category == "depthwise conv"
    assert dw.input_shape == (1, 8, 64, 64) and dw.output_shape == (1, 8, 64, 64)
    assert dw.macs == 64 * 64 * 8 * 9 and dw.params == 8 * 9
    assert rows["classifier"].category == "fully connected"
    assert "features.0.2" in rows and rows["features.0.2"].macs == 0  # activations are listed, at 0 MACs
    assert all(r.type != "Dropout" for r in report.layers)
    data = json.loads(report.to_json())
    assert data["macs"] == report.macs and data["flops"] == 2 * report.macs and len(data["layers"]) == len(report.layers)
    md = report.to_markdown()
    assert f"{report.macs:,} MACs" in md and "| features.1.0.depthwise | Conv2d | 1x8x64x64 | 1x8x64x64 |" in md
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(report)
    text = console.export_text()
    assert "features.1.0.pointwise" in text and f"{report.macs:,}" in text
    assert report.activation_bytes == sum(math.prod(r.output_shape) * 4 for r in report.layers)


def test_profile_bfloat16_bytes():
    model = nn.Conv2d(3, 4, 3)
    r32 = C.profile(model, (1, 3, 8, 8))
    r16 = C.profile(model, (1, 3, 8, 8), dtype=torch.bfloat16)
    assert r16.macs == r32.macs and r16.activation_bytes * 2 == r32.activation_bytes
    assert r16.param_bytes * 2 == r32.param_bytes


def test_profile_names_the_failing_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 5), nn.Conv2d(8, 8, 5), nn.Conv2d(8, 8, 5))
    with pytest.raises(ValueError, match=r"profile: layer '2' \(Conv2d\) failed on input of shape \(1, 8, 2, 2\)"):
        C.profile(model, (1, 3, 10, 10))
    with pytest.raises(ValueError, match=r"layer 'features.0.0' \(Conv2d\) failed on input of shape \(1, 4, 32, 32\)"):
        C.profile(mobilenet_v1(0.25), (1, 4, 32, 32))


def test_cost_bad_input():
    with pytest.raises(TypeError, match="input_size: expected a shape like"):
        C.profile(nn.Conv2d(3, 3, 3), "1x3x8x8")
    # a tensor instead of its shape: named by dtype and shape (its repr, the data, was the message)
    with pytest.raises(TypeError) as info:
        C.profile(nn.Conv2d(3, 3, 3), torch.randn(1, 3, 32, 32))
    assert str(info.value) == ("input_size: expected a shape like (1, 3, 224, 224) or a list of shapes, got a "
                               "torch.float32 tensor of shape (1, 3, 32, 32) (pass its .shape)")
    with pytest.raises(TypeError, match="model: expected an nn.Module, got str"):
        C.profile("mobilenet", (1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"input_shape: expected \(B, C, \*spatial\) with 1 to 3 spatial dims, got \(3, 8\)"):
        C.conv_cost((3, 8), 4, 3)
    with pytest.raises(ValueError, match="input_shape: spatial size 2 \\(padded 2\\) is smaller than the dilated kernel 3"):
        C.conv_cost((1, 3, 2, 2), 4, 3)
    with pytest.raises(ValueError, match="groups: expected a divisor of in_channels=3 and out_channels=4, got 2"):
        C.conv_cost((1, 3, 8, 8), 4, 3, groups=2)
    with pytest.raises(ValueError, match="rank: expected a positive int, got 0"):
        C.spatially_separable_conv_cost((1, 3, 8, 8), 4, 3, rank=0)
