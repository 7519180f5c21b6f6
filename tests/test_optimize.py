"""optimize_for_inference: equal outputs, inference-only, and the fallback path."""

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sepconv
from sepconv.convert import convert
from sepconv.models import digits_cnn, mobilenet_v1
from sepconv.optimize import BACKENDS, fold_batchnorms, optimize_for_inference, release_buffers

sys.path.insert(0, str(Path(__file__).parent))
from architectures import randomize_batchnorm  # noqa: E402


@pytest.mark.parametrize("make,shape", [
    (lambda: mobilenet_v1(0.25, num_classes=10), (2, 3, 64, 64)),
    (lambda: digits_cnn(8), (4, 1, 16, 16)),
    (lambda: nn.Sequential(sepconv.SeparableConv2d(3, 8, 3, stride=2, padding="same", norm_layer=nn.BatchNorm2d,
                                                   act_layer=nn.ReLU), nn.BatchNorm2d(8), nn.ReLU6(),
                           sepconv.BlueprintSeparableConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                           sepconv.SpatiallySeparableConv2d(8, 4, 5, rank=4, padding="same", padding_mode="reflect")),
     (2, 3, 17, 17)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_optimized_equals_reference(make, shape, dtype):
    torch.manual_seed(0)
    model = randomize_batchnorm(make()).to(dtype)
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        ref = model(x)
    fast = optimize_for_inference(model, x, rounds=2)
    out = fast(x)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert float((out - ref).norm() / ref.norm()) <= tol
    assert fast.backend in BACKENDS and fast.backend != "compile"  # not a default candidate
    # and on a different batch than the one it was prepared with
    x2 = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(fast(x2), model(x2), rtol=tol, atol=tol * 10)


def test_fold_batchnorms_is_exact_and_leaves_original():
    model = randomize_batchnorm(mobilenet_v1(0.25, num_classes=5))
    x = torch.randn(2, 3, 32, 32)
    folded = fold_batchnorms(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    assert sepconv.profile(folded, x.shape).macs == sepconv.profile(model, x.shape).macs


@pytest.mark.parametrize("shape,channels_last", [((2, 16, 7, 5), True), ((1, 8, 1, 9), False), ((8, 3, 4), False)])
def test_global_average_pool_runs_as_one_window(shape, channels_last):
    """The eager and fused paths pool an ``AdaptiveAvgPool2d(1)`` as one ``avg_pool2d`` window
    over the whole map: the same means (float64 reference) for batched, unbatched and
    channels_last maps; empty maps and other output sizes are left to the adaptive pooling."""
    from sepconv.optimize import _lower
    from sepconv.optimize.rewrite import _GlobalAvgPool2d

    model = _lower(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(0 if len(shape) == 3 else 1)))
    assert isinstance(model[0], _GlobalAvgPool2d)
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = x.double().mean((-2, -1))
    torch.testing.assert_close(model(x).double(), want.flatten(0 if len(shape) == 3 else 1), rtol=1e-6, atol=1e-7)
    assert model[0](torch.randn(2, 3, 0, 4)).shape == (2, 3, 1, 1)  # empty: as PyTorch's adaptive pooling
    kept = _lower(nn.Sequential(nn.AdaptiveAvgPool2d((2, 1)), nn.AdaptiveMaxPool2d(1)))
    assert [type(m) for m in kept] == [nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d]


def test_converted_model_optimizes(trained_digits_cnn, digits):
    x = digits[1].tensors(64)[0]
    small, _ = convert(trained_digits_cnn, budget=0.3, example_input=x[:1])
    fast = optimize_for_inference(small, x, rounds=2)
    with torch.no_grad():
        ref = small(x)
    assert float((fast(x) - ref).norm() / ref.norm()) <= 1e-4


def test_inference_only_raises_clearly_for_gradients():
    fast = optimize_for_inference(digits_cnn(4).eval(), torch.randn(1, 1, 16, 16), rounds=1)
    with pytest.raises(RuntimeError, match="optimize_for_inference returned an inference-only model"):
        fast(torch.randn(1, 1, 16, 16, requires_grad=True))
    # without gradients it runs, recording no autograd graph (its parameters are frozen), on
    # every backend
    for candidates in [("eager",), ("fused",), ("torchscript",), ("eager", "fused", "torchscript")]:
        fast = optimize_for_inference(digits_cnn(4).eval(), torch.randn(1, 1, 16, 16), rounds=1, candidates=candidates)
        assert not any(p.requires_grad for p in fast.parameters())
        y = fast(torch.randn(1, 1, 16, 16))
        assert y.shape == (1, 10) and not y.requires_grad and y.grad_fn is None


def test_fallback_to_eager_when_the_fast_path_is_unavailable(monkeypatch):
    model = digits_cnn(4).eval()
    x = torch.randn(2, 1, 16, 16)

    def broken_trace(*args, **kwargs):
        raise RuntimeError("tracing unavailable")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    fast = optimize_for_inference(model, x, rounds=1, candidates=("eager", "torchscript"))
    assert fast.backend == "eager"
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    # no example input: the eager channels_last path, BatchNorm folded
    plain = optimize_for_inference(model)
    assert plain.backend == "eager" and plain.timings == {}
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-5)


def test_wrong_results_are_never_chosen(monkeypatch):
    model = digits_cnn(4).eval()
    x = torch.randn(2, 1, 16, 16)
    real_freeze = torch.jit.freeze

    def corrupting_freeze(module, *a, **k):
        frozen = real_freeze(module, *a, **k)

        class Wrong(nn.Module):
            def forward(self, inp):
                return frozen(inp) + 1.0

        return torch.jit.script(Wrong())

    monkeypatch.setattr(torch.jit, "freeze", corrupting_freeze)
    monkeypatch.setattr(torch.jit, "optimize_for_inference", lambda m: m)
    fast = optimize_for_inference(model, x, rounds=1, candidates=("eager", "torchscript"))
    assert fast.backend == "eager"


def test_optimize_bad_input():
    with pytest.raises(TypeError, match="model: expected an nn.Module, got str"):
        optimize_for_inference("model")
    with pytest.raises(ValueError, match="candidates: expected a non-empty subset of"):
        optimize_for_inference(digits_cnn(4), candidates=("tensorrt",))
    with pytest.raises(TypeError, match="example_input: expected a torch.Tensor, got list"):
        optimize_for_inference(digits_cnn(4), [1, 2])


def test_other_input_sizes_still_correct():
    # TF 'same' with a stride depends on the input size, which a traced graph would bake in
    model = nn.Sequential(sepconv.SeparableConv2d(3, 8, 4, stride=2, padding="same"), nn.ReLU()).eval()
    fast = optimize_for_inference(model, torch.randn(1, 3, 16, 16), rounds=1, candidates=("torchscript",))
    assert fast.backend == "torchscript"
    x = torch.randn(2, 3, 19, 21)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


# ---- the fused depthwise + pointwise kernel ----
@pytest.fixture(scope="module")
def fused_ext():
    from sepconv import _fused

    ext = _fused.load()  # compiled on first use (~1 min), cached
    assert ext is not None, f"the fused kernel failed to build: {_fused.error()}"
    return ext


def _with_threads(threads, fn, *args):
    """fn(*args) in inference mode on `threads` threads (the thread count restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return fn(*args)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cin,cout,k,stride,padding,bias,act_mid,act_out,size", [
    (3, 10, 3, 1, 0, True, None, None, 15),          # the seeds' example
    (32, 64, 3, 1, 1, False, nn.ReLU, nn.ReLU, 20),
    (24, 40, 3, 2, 1, True, nn.ReLU6, nn.ReLU6, 17),   # odd sizes, N not a multiple of 16
    (33, 17, 5, 2, "same", True, None, nn.ReLU, 13),   # C not a multiple of 32, TF 'same' (stride: dynamic)
    (16, 16, 4, 1, "same", True, nn.ReLU, None, 9),    # even kernel: asymmetric pads
    (8, 48, 3, 3, 2, False, None, None, 11),
    (61, 40, 3, 1, 1, True, nn.ReLU, None, 13),       # 61 = 32 + 16 + 8 + 5, 40 = 32 + 8: every channel block
])
def test_fused_kernel_equals_reference(fused_ext, isa, cin, cout, k, stride, padding, bias, act_mid, act_out, size):
    from sepconv.optimize import FusedSeparableConv2d, _ACTS, _fused_class

    torch.manual_seed(0)
    layer = sepconv.SeparableConv2d(cin, cout, k, stride, padding, bias=bias, act_layer=act_mid).eval()
    with torch.no_grad():
        layer.depthwise.bias = nn.Parameter(torch.randn(cin) * 0.1)  # as after BatchNorm folding
    x = torch.randn(3, cin, size, size + 1).contiguous(memory_format=torch.channels_last)
    act = act_out() if act_out else nn.Identity()
    with torch.no_grad():
        ref = act(layer(x))
    if layer._dynamic:
        assert _fused_class(layer) is None  # input-size dependent pads stay on the PyTorch path
        return
    assert _fused_class(layer) is FusedSeparableConv2d
    fused = FusedSeparableConv2d(layer, _ACTS[type(act)])
    with torch.inference_mode():
        out = fused(x)
        out_nchw = fused(x.contiguous())  # any memory format in, channels_last out
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_nchw, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(copy.deepcopy(fused)(x), out)  # copyable, like any module
    # float64 and gradient-carrying inputs run the reference layer
    ref64 = act(layer.double()(x.double()))
    torch.testing.assert_close(fused(x.double()), ref64)
    layer.float()
    # gradient-carrying inputs run the reference layer: the same gradients as the layer itself
    xg = x.clone().requires_grad_()
    fused(xg).pow(2).sum().backward()
    xr = x.clone().requires_grad_()
    act(layer(xr)).pow(2).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cin=st.integers(1, 70), cout=st.integers(1, 40), k=st.sampled_from([1, 2, 3, 4, 5, 7]), stride=st.integers(1, 3),
       same=st.booleans(), h=st.integers(1, 23), w=st.integers(1, 23), batch=st.integers(1, 3),
       acts=st.sampled_from([(None, None), (nn.ReLU, nn.ReLU6), (nn.ReLU6, nn.ReLU)]),
       tile_px=st.sampled_from([6, 30, 4096]), threads=st.sampled_from([1, 2]), mult=st.sampled_from([1, 1, 2, 3]))
def test_fused_kernel_fuzz_float64_reference(fused_ext, isa, cin, cout, k, stride, same, h, w, batch, acts, tile_px, threads, mult):
    """Every path of the kernel (16-/8-channel blocks and the scalar tail, 3x3/5x5/any taps, border
    and interior pixels, tiles that split rows, one or two threads, depth multipliers) against a
    float64 reference."""
    from sepconv.optimize import FusedSeparableConv2d, _ACTS

    padding = "same" if same and stride == 1 else k // 2  # 'same' with an even k: asymmetric pads
    torch.manual_seed(cin * 1000 + cout)
    layer = sepconv.SeparableConv2d(cin, cout, k, stride, padding, depth_multiplier=mult, act_layer=acts[0]).eval()
    with torch.no_grad():
        layer.depthwise.bias = nn.Parameter(torch.randn(cin * mult) * 0.1)
    act = acts[1]() if acts[1] else nn.Identity()
    fused = FusedSeparableConv2d(layer, _ACTS[type(act)])
    fused.tile_bytes = tile_px * cin * mult * 4  # small tiles: many per image, starting mid-row
    x = torch.randn(batch, cin, h, w)
    ref = act(copy.deepcopy(layer).double()(x.double()))
    out = _with_threads(threads, fused, x)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cin,cout,size", [(520, 24, 5), (777, 40, 9), (32, 64, 112), (32, 96, 112), (768, 784, 5)])
def test_fused_kernel_large_channels_and_outputs(fused_ext, isa, cin, cout, size):
    """Deep inputs (777 in two tiles; plain stores), an output of 3.2 MB (plain stores) and one of
    4.8 MB with C <= 384 (over 4 MB: streaming stores); weights over half of L2 (2.4 MB) in one
    tile: the threads split the weight panels (in whole register blocks: 49 panels) instead of the
    pixels."""
    from sepconv.optimize import FusedSeparableConv2d

    torch.manual_seed(0)
    layer = sepconv.SeparableConv2d(cin, cout, 3, 1, 1).eval()
    fused = FusedSeparableConv2d(layer, 0)
    x = torch.randn(1, cin, size, size)
    ref = copy.deepcopy(layer).double()(x.double())
    with torch.inference_mode():
        out = fused(x)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tiles", ["one", "several"])
def test_fused_kernel_weights_over_half_of_l2_at_batch_1(fused_ext, isa, tiles):
    """Weights larger than half of this machine's L2 and fewer images than threads: each thread
    computes its share of the output channels for the whole image (the depthwise part in every
    thread), in one tile or, for an image whose depthwise result is twice L2, in several; N not a
    multiple of a register block."""
    from sepconv.optimize import FusedSeparableConv2d

    l2 = fused_ext.cache_sizes()[1]
    cin = 256
    cout = l2 // 2 // (4 * cin) + 40  # weights just over half of L2
    side = 7 if tiles == "one" else math.isqrt(2 * l2 // (4 * cin)) + 1
    torch.manual_seed(0)
    layer = sepconv.SeparableConv2d(cin, cout, 3, 1, 1).eval()
    with torch.no_grad():
        layer.depthwise.bias = nn.Parameter(torch.randn(cin) * 0.1)
    fused = FusedSeparableConv2d(layer, 1)
    x = torch.randn(1, cin, side, side + 2)
    out = _with_threads(2, fused, x)
    torch.testing.assert_close(out.double(), copy.deepcopy(layer).double()(x.double()).relu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemms_deeper_than_a_channel_block_sum_partial_blocks(fused_ext, isa, threads):
    """Inputs deeper than 1.5 channel blocks (``blocking()``'s last value: a quarter of L2) are
    summed in blocks, the partial sums kept between them: the fused dw+pw and the linear GEMM,
    with 80 and 72 outputs (a 64-column block and a leftover of one panel, whole or half filled)."""
    from sepconv.optimize import FusedLinear, FusedSeparableConv2d

    kc = fused_ext.blocking()[3]
    deep = 2 * kc + 37  # three channel blocks, the last one partial
    torch.manual_seed(0)
    layer = sepconv.SeparableConv2d(deep, 80, 3, 1, 1).eval()
    x = torch.randn(1, deep, 4, 5)
    out = _with_threads(threads, FusedSeparableConv2d(layer, 1), x)
    torch.testing.assert_close(out.double(), copy.deepcopy(layer).double()(x.double()).relu(), rtol=1e-5, atol=1e-5)
    linear = nn.Linear(deep, 72).eval()
    a = torch.randn(9, deep)
    out = _with_threads(threads, FusedLinear(linear, 0), a)
    ref = nn.functional.linear(a.double(), linear.weight.double(), linear.bias.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_fused_conv_large_output_streams(fused_ext, isa):
    """A stem conv output over 4 MB (3 images x 32 x 112 x 112 floats) is written with
    streaming stores, on the gathered border columns and the in-place interior alike."""
    from sepconv.optimize import FusedConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 32, 3, 2, 1).eval()
    x = torch.randn(3, 3, 224, 224)
    ref = torch.relu(nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), 2, 1))
    with torch.inference_mode():
        out = FusedConv2d(conv, 1)(x)
    assert out.numel() * 4 >= 4 << 20
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def _act_ref(y, act):
    return y.relu() if act == 1 else (y.clamp(0, 6) if act == 2 else y)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cin=st.integers(1, 7), cout=st.integers(1, 40), kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 3),
       sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2), pad=st.sampled_from([0, 1, 2, "same"]),
       bias=st.booleans(), act=st.sampled_from([0, 1, 2]), h=st.integers(1, 20), w=st.integers(1, 20),
       batch=st.integers(1, 3), threads=st.sampled_from([1, 2]))
def test_fused_conv_fuzz_float64_reference(fused_ext, isa, cin, cout, kh, kw, sh, sw, dh, dw, pad, bias, act, h, w, batch, threads):
    """FusedConv2d (patches read in place for interior columns, gathered at the border) against a
    float64 conv, for every geometry nn.Conv2d accepts ('same' with even kernels: asymmetric pads)."""
    from sepconv.optimize import FusedConv2d

    if pad == "same":
        sh = sw = 1
    if (h + 2 * (pad if pad != "same" else 0) < dh * (kh - 1) + 1) or (w + 2 * (pad if pad != "same" else 0) < dw * (kw - 1) + 1):
        return  # no output
    torch.manual_seed(cin * 100 + cout)
    conv = nn.Conv2d(cin, cout, (kh, kw), (sh, sw), pad, (dh, dw), bias=bias).eval()
    fused = FusedConv2d(conv, act)
    x = torch.randn(batch, cin, h, w)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'same' with an even kernel: PyTorch pads a copy
        ref = _act_ref(nn.functional.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                                            conv.stride, conv.padding, conv.dilation), act)
    out = _with_threads(threads, fused, x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,out_features,act", [
    ((8, 1024), 1000, 0),     # MobileNetV1's classifier: 1024 > 384 input features (summed in blocks), N % 16 = 8
    ((1, 1024), 1000, 1),     # one row: the weight panels split over the threads
    ((200, 37), 50, 2),       # three row tiles
    ((2, 3, 5), 17, 0),       # leading dimensions
    ((9,), 4, 1),             # a single vector
])
def test_fused_linear_float64_reference(fused_ext, isa, shape, out_features, act):
    from sepconv.optimize import FusedLinear

    torch.manual_seed(0)
    linear = nn.Linear(shape[-1], out_features).eval()
    fused = FusedLinear(linear, act)
    x = torch.randn(*shape)
    ref = _act_ref(nn.functional.linear(x.double(), linear.weight.double(), linear.bias.double()), act)
    for threads in (1, 2):
        out = _with_threads(threads, fused, x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    no_bias = nn.Linear(shape[-1], out_features, bias=False).eval()
    with torch.inference_mode():
        torch.testing.assert_close(FusedLinear(no_bias, 0)(x).double(), nn.functional.linear(x.double(), no_bias.weight.double()),
                                   rtol=1e-5, atol=1e-5)


def test_fused_conv_and_linear_fall_back_and_trace(fused_ext):
    """Other dtypes and inputs needing gradients run the original layer (gradients correct); the
    kernels are dispatcher ops that tracing records; which layers get a fused version."""
    from sepconv.optimize import FusedConv2d, FusedLinear, _fused_class

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, 2, 1)
    linear = nn.Linear(20, 7)
    for layer, fused, x in [(conv, FusedConv2d(conv, 1), torch.randn(2, 3, 9, 9)), (linear, FusedLinear(linear, 1), torch.randn(4, 20))]:
        xd = x.double().requires_grad_()
        ref_layer = copy.deepcopy(layer).double()
        expected = torch.relu(ref_layer(xd))
        # float64: the reference layer
        torch.testing.assert_close(copy.deepcopy(fused).double()(x.double()), expected.detach())
        xg = x.clone().requires_grad_()
        y = fused(xg)  # gradients needed: the reference layer, differentiable
        y.sum().backward()
        expected.sum().backward()
        torch.testing.assert_close(xg.grad.double(), xd.grad, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            traced = torch.jit.trace(fused, x, check_trace=False)
            assert ("sepconv::conv2d_gemm" if layer is conv else "sepconv::linear_gemm") in str(traced.graph)
            torch.testing.assert_close(traced(x), torch.relu(layer(x)), rtol=1e-4, atol=1e-5)
    assert _fused_class(nn.Conv2d(3, 8, 3)) is FusedConv2d
    assert _fused_class(nn.Conv2d(8, 8, 3)) is None                          # 72 inputs per output > STEM_MAX_K
    assert _fused_class(nn.Conv2d(4, 8, 3, groups=2)) is None
    assert _fused_class(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")) is None
    assert _fused_class(nn.Conv2d(3, 8, 3).double()) is None
    assert _fused_class(nn.Linear(3, 8)) is FusedLinear
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns that initializing zero-element weights is a no-op
        empty = [nn.Linear(0, 8), nn.Linear(3, 0), nn.Conv2d(0, 8, 3), nn.Conv2d(3, 0, 3)]
    assert all(_fused_class(m) is None for m in empty)  # nothing to multiply: the PyTorch layer stays
    from sepconv.optimize import FusedSeparableConv2d

    assert _fused_class(sepconv.SeparableConv2d(4, 8, 3, depth_multiplier=3)) is FusedSeparableConv2d
    assert _fused_class(sepconv.SeparableConv2d(4, 8, 3, dilation=2)) is None


def test_optimized_mobilenet_uses_fused_stem_and_classifier(fused_ext, monkeypatch):
    """With every kernel measured faster, the stem conv (+ ReLU), each separable layer and the
    classifier are replaced, and the model still matches the reference."""
    import sepconv.optimize.dispatch as O
    from sepconv.optimize import FusedConv2d, FusedLinear, FusedSeparableConv2d

    monkeypatch.setattr(O, "interleaved", lambda fns, rounds, warmup=1: {k: (1.0 if k == "fused" else 2.0) for k in fns})
    model = randomize_batchnorm(mobilenet_v1(0.25, num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    fast = optimize_for_inference(model, x, rounds=1, candidates=("fused",))
    kinds = [type(m) for m in fast.module.modules()]
    assert kinds.count(FusedConv2d) == 1 and kinds.count(FusedSeparableConv2d) == 13 and kinds.count(FusedLinear) == 1
    assert isinstance(fast.module.features[0][0], FusedConv2d) and fast.module.features[0][0].act_out == 1
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_fused_output_pool_never_overwrites_a_held_result(fused_ext):
    """Outputs >= 1 MiB come from a caching allocator; memory is reused only once nothing references it."""
    from sepconv.optimize import FusedSeparableConv2d

    torch.manual_seed(0)
    layer = sepconv.SeparableConv2d(16, 64, 3, 1, 1).eval()
    fused = FusedSeparableConv2d(layer, 0)
    xs = [torch.randn(1, 16, 64, 64) for _ in range(4)]
    release_buffers()  # no idle blocks left over from other tests
    with torch.inference_mode():
        refs = [layer(x) for x in xs]
        y0 = fused(xs[0])  # 1 MiB: pooled
        y1 = fused(xs[1])  # y0 is held: a different buffer
        assert y1.data_ptr() != y0.data_ptr()
        view = y1[:, :8]
        ptr1 = y1.data_ptr()
        del y1  # the view still holds the storage
        y2 = fused(xs[2])
        assert y2.data_ptr() != ptr1
        torch.testing.assert_close(y0, refs[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(view, refs[1][:, :8], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(y2, refs[2], rtol=1e-4, atol=1e-5)
        ptr2 = y2.data_ptr()
        del y2  # now unreferenced: the next call reuses it instead of faulting in fresh pages
        y3 = fused(xs[3])
        assert y3.data_ptr() == ptr2
        torch.testing.assert_close(y3, refs[3], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(y0, refs[0], rtol=1e-4, atol=1e-5)
        arr = y3.numpy()  # a NumPy array over the buffer keeps it out of reach too
        del y3
        y4 = fused(xs[0])
        assert y4.data_ptr() != arr.ctypes.data
    release_buffers()


def test_fused_kernels_use_every_thread(fused_ext):
    """at::parallel_for inside the extension really runs on torch's threads (built without -fopenmp
    under torch's OpenMP backend it silently ran on one)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert fused_ext.parallel_threads() == 2
        torch.set_num_threads(1)
        assert fused_ext.parallel_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_fused_kernel_is_a_dispatcher_op(fused_ext):
    """torch.ops.sepconv.fused_dwpw passes torch's op checks (schema, fake tensor) and is seen by
    tracing (not baked in as a constant) and by torch.compile without a graph break."""
    from sepconv.optimize import FusedSeparableConv2d

    torch.manual_seed(0)
    layer = sepconv.SeparableConv2d(24, 40, 3, 2, 1).eval()
    fused = FusedSeparableConv2d(layer, 1)
    x = torch.randn(2, 24, 17, 18).contiguous(memory_format=torch.channels_last)
    args = (x, fused.dw_weight, fused.dw_bias, fused.act_mid, fused.pw_weight, fused.pw_bias, fused.n, fused.act_out,
            *fused.geometry, fused.tile_bytes)
    result = torch.library.opcheck(torch.ops.sepconv.fused_dwpw.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result
    with torch.no_grad():
        traced = torch.jit.trace(fused, x, check_trace=False)
    assert "sepconv::fused_dwpw" in str(traced.graph)
    x2 = torch.randn(1, 24, 17, 18).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(traced(x2), torch.relu(layer(x2)), rtol=1e-4, atol=1e-5)
    compiled = torch.compile(fused, fullgraph=True)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x2), fused(x2))


def test_fused_path_is_chosen_where_it_wins_and_matches(fused_ext):
    layer = sepconv.SeparableConv2d(3, 10, 3).eval()
    x = torch.randn(1, 3, 15, 15)
    fast = optimize_for_inference(layer, x, rounds=5, candidates=("eager", "fused"))
    assert "fused" in fast.timings
    with torch.no_grad():
        torch.testing.assert_close(fast(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("measured,chosen", [
    ({"eager": 1.0, "fused": 1.03, "torchscript": 0.99, "fused+torchscript": 1.2}, "fused"),       # within 10%: fused
    ({"eager": 1.0, "fused": 1.08, "torchscript": 0.99, "fused+torchscript": 1.2}, "fused"),
    ({"eager": 1.0, "fused": 1.10, "torchscript": 0.99, "fused+torchscript": 1.03}, "fused+torchscript"),
    ({"eager": 1.0, "fused": 1.10, "torchscript": 0.90, "fused+torchscript": 1.2}, "torchscript"),  # a clear win
])
def test_dispatch_prefers_fused_paths_on_near_ties(fused_ext, monkeypatch, measured, chosen):
    import sepconv.optimize.dispatch as O

    def fake(fns, rounds, warmup=1):
        if set(fns) == {"eager", "fused"}:  # the per-layer dispatch: let the kernel win
            return {"eager": 2.0, "fused": 1.0}
        return {k: measured[k] for k in fns}

    monkeypatch.setattr(O, "interleaved", fake)
    layer = sepconv.SeparableConv2d(3, 10, 3).eval()
    fast = optimize_for_inference(layer, torch.randn(1, 3, 15, 15), rounds=1)
    assert fast.backend == chosen


def test_fused_unavailable_falls_back(monkeypatch):
    from sepconv import _fused

    monkeypatch.setattr(_fused, "load", lambda: None)
    layer = sepconv.SeparableConv2d(3, 10, 3).eval()
    x = torch.randn(1, 3, 15, 15)
    fast = optimize_for_inference(layer, x, rounds=2, candidates=("eager", "fused"))
    assert fast.backend == "eager" and "fused" not in fast.timings
    with torch.no_grad():
        torch.testing.assert_close(fast(x), layer(x), rtol=1e-4, atol=1e-5)

    # a fused layer built where the kernel exists, then run where it does not, uses its reference
    from sepconv.optimize import FusedSeparableConv2d

    fused = FusedSeparableConv2d(layer, 1)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), torch.relu(layer(x)))

def test_interleaved_varies_each_candidates_neighbours():
    """Every round runs each candidate once, and over the rounds each candidate follows several
    different ones (a rotated fixed order would give it the same predecessor every time)."""
    from sepconv._timing import interleaved

    calls = []
    names = ["a", "b", "c", "d", "e"]
    t = interleaved({k: (lambda k=k: calls.append(k)) for k in names}, rounds=12, warmup=1)
    assert sorted(t) == names and all(v >= 0 for v in t.values())
    rounds = [calls[len(names) + i * len(names):len(names) + (i + 1) * len(names)] for i in range(12)]
    assert all(sorted(r) == names for r in rounds) and len(calls) == 13 * len(names)
    seq = [k for r in rounds for k in r]
    predecessors = {k: {p for p, q in zip(seq, seq[1:]) if q == k} for k in names}
    assert all(len(p) >= 3 for p in predecessors.values()), predecessors
    calls.clear()
    interleaved({k: (lambda k=k: calls.append(k)) for k in names}, rounds=12, warmup=1)
    assert [k for k in calls[len(names):]] == seq  # seeded: the same order on every call


@pytest.mark.parametrize("timings,rounds,expected", [
    ({"eager": 20.0, "fused": 21.0, "torchscript": 40.0}, 10, 49),  # 2000 ms over the two close ones (41 ms)
    ({"eager": 20.0, "fused": 24.9}, 10, 45),                       # 24.9 <= 1.25 x 20: close
    ({"eager": 20.0, "fused": 25.1}, 10, 0),                        # only one path close to the fastest
    ({"eager": 0.1, "fused": 0.1}, 10, 200),                        # at most 20 x rounds
    ({"eager": 0.1, "fused": 0.1}, 2, 40),
    ({"eager": 150.0, "fused": 150.0}, 10, 0),                      # 10 rounds of 300 ms: long enough
])
def test_settle_rounds(timings, rounds, expected):
    from sepconv.optimize.dispatch import settle_rounds

    assert settle_rounds(timings, rounds) == expected


def test_dispatch_times_the_close_paths_again_and_decides_on_that(fused_ext, monkeypatch):
    """A first timing where TorchScript wins clearly, then a longer one of the paths close to it
    where it is tied with the fused path: the tie rule takes the fused path, and the slow path is
    not timed again."""
    import sepconv.optimize.dispatch as O

    calls = []

    def fake(fns, rounds, warmup=1):
        if set(fns) == {"eager", "fused"} and rounds == 1:  # the per-layer dispatch: let the kernel win
            return {"eager": 2.0, "fused": 1.0}
        calls.append((sorted(fns), rounds))
        first = {"eager": 1.04, "fused": 1.05, "torchscript": 0.9, "fused+torchscript": 2.0}
        return {k: first[k] if len(calls) == 1 else 1.0 for k in fns}

    monkeypatch.setattr(O, "interleaved", fake)
    layer = sepconv.SeparableConv2d(3, 10, 3).eval()
    fast = optimize_for_inference(layer, torch.randn(1, 3, 15, 15), rounds=1)
    assert calls == [(["eager", "fused", "fused+torchscript", "torchscript"], 1),
                     (["eager", "fused", "torchscript"], 20)]  # 20 x rounds: the fake times are short
    assert fast.backend == "fused"
    assert fast.timings == {"eager": 1.0, "fused": 1.0, "torchscript": 1.0, "fused+torchscript": 2.0}


def test_a_path_that_raises_in_the_second_timing_is_dropped(monkeypatch):
    import sepconv.optimize.dispatch as O

    runs = {"a": 0, "b": 0, "c": 0}

    def path(name):
        def run(x):
            runs[name] += 1
            if name == "b" and runs[name] > 1:
                raise RuntimeError("out of memory")
            return x
        return run

    def fake(fns, rounds, warmup=1):
        for f in fns.values():
            f()
        return {k: {"a": 1.0, "b": 1.1, "c": 5.0}[k] for k in fns}

    monkeypatch.setattr(O, "interleaved", fake)
    correct, rejected = {k: path(k) for k in "abc"}, {}
    timings = O._measure(correct, torch.zeros(1), 10, rejected)
    assert set(correct) == {"a", "c"} and timings == {"a": 1.0, "c": 5.0}
    assert rejected == {"b": "failed on the example input: RuntimeError: out of memory"}


@pytest.mark.parametrize("candidates", [("torchscript",), ("fused", "torchscript"), ("eager",)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_give_what_the_original_gives(candidates, bad):
    """A frozen TorchScript graph (oneDNN's fused ReLU and max-pool) turned a NaN input into
    numbers: an input with NaN or Inf now runs the eager path wherever the chosen path would not
    reproduce the original's NaN, and a finite input still runs the chosen path."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          sepconv.SeparableConv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).eval()
    x = torch.randn(2, 3, 16, 16)
    fast = sepconv.optimize_for_inference(model, x, candidates=candidates, rounds=1)
    bad_x = x.clone()
    bad_x[1, 2, 3, 4] = bad
    with torch.no_grad():
        want = model(bad_x)
    got = fast(bad_x)
    assert torch.isnan(want[1]).all() and not torch.isnan(want[0]).any()  # the probe means something
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    if fast.backend == "torchscript":
        assert fast.nonfinite_to_eager  # oneDNN's fused conv + ReLU and max-pool: NaN would become numbers
    torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("candidates", [("eager",), ("fused",), ("torchscript",)])
def test_an_input_of_another_dtype_is_a_type_error(candidates):
    """The optimized weights and graph take the example's dtype: another one is a TypeError saying
    so (it was a RuntimeError from inside the TorchScript interpreter or a kernel)."""
    model = nn.Sequential(sepconv.SeparableConv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)).eval()
    x = torch.randn(1, 3, 12, 12)
    fast = sepconv.optimize_for_inference(model, x, candidates=candidates, rounds=1)
    for dtype in (torch.float64, torch.int64):
        with pytest.raises(TypeError, match=rf"^input: expected dtype torch.float32 \(the example input's, which the "
                                            rf"model was optimized for\), got {dtype}$"):
            fast(x.to(dtype))
    torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("candidates", [("eager",), ("fused",), ("torchscript",)])
def test_an_input_of_another_rank_runs_where_the_model_takes_it_else_is_a_value_error(candidates):
    """An unbatched image: a model without BatchNorms runs it as the original does; one whose
    BatchNorm2d refused it (folded away in the optimized model) gives a ValueError naming the
    expected rank, not a shape error from deep inside (it was 'mat1 and mat2 shapes cannot be
    multiplied' from the classifier)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    plain = nn.Sequential(sepconv.SeparableConv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    fast = sepconv.optimize_for_inference(plain, x, candidates=candidates, rounds=1)
    torch.testing.assert_close(fast(x[0]), plain(x[0]), rtol=1e-4, atol=1e-5)
    normed = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                           nn.Linear(8 * 144, 10)).eval()
    with pytest.raises(ValueError, match=r"^expected 4D input \(got 3D input\)$"):
        normed(x[0])
    fast = sepconv.optimize_for_inference(normed, x, candidates=candidates, rounds=1)
    with pytest.raises(ValueError, match=r"^input: expected a 4-D input like the example input \(shape \(2, 3, 12, 12\)\), "
                                         r"got shape \(3, 12, 12\): the optimized model does not run it \(.+\)$"):
        fast(x[0])
    torch.testing.assert_close(fast(x), normed(x), rtol=1e-4, atol=1e-5)
