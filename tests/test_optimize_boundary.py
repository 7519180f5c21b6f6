"""optimize_for_inference at its boundary: argument checks with exact messages, candidate paths
that fail or mismatch reported (never raised), saving / pickling / copying every backend, and
inputs the layers accept (unbatched)."""

import copy
import io
import math
import pickle
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import sepconv
import sepconv.optimize.dispatch as D
from sepconv.models import digits_cnn, mobilenet_v1
from sepconv.optimize import InferenceModule, optimize_for_inference
from sepconv.optimize.checks import relative_error

sys.path.insert(0, str(Path(__file__).parent))
from architectures import vgg_bn  # noqa: E402

CANDS = "('eager', 'fused', 'torchscript', 'compile')"


def _digits():
    torch.manual_seed(0)
    return digits_cnn(4).eval()


def _with(fn, *a):
    m = _digits()
    fn(m, *a)
    return m


def _set(m, name, index, value):
    with torch.no_grad():
        dict(m.named_parameters(), **dict(m.named_buffers()))[name][index] = value


X = torch.randn(2, 1, 16, 16)
NAN_X = X.clone()
NAN_X[1, 0, 3, 4] = math.nan

BAD = [  # (kwargs, error type, exact message)
    (dict(rounds=0), ValueError, "rounds: expected a positive int, got 0"),
    (dict(rounds=-3), ValueError, "rounds: expected a positive int, got -3"),
    (dict(rounds=1.5), TypeError, "rounds: expected a positive int, got 1.5 (float)"),
    (dict(rounds=True), TypeError, "rounds: expected a positive int, got True (bool)"),
    (dict(candidates="fused"), TypeError, f"candidates: expected a tuple of names from {CANDS}, got 'fused'"),
    (dict(candidates=None), TypeError, f"candidates: expected a tuple of names from {CANDS}, got None"),
    (dict(candidates=()), ValueError, f"candidates: expected a non-empty subset of {CANDS}, got ()"),
    (dict(candidates=("eager", 3)), ValueError, f"candidates: expected a non-empty subset of {CANDS}, got ('eager', 3)"),
    (dict(example_input=torch.tensor(1.0)), ValueError,
     "example_input: expected a non-empty tensor with at least one dimension, got shape ()"),
    (dict(example_input=torch.randn(0, 1, 16, 16)), ValueError,
     "example_input: expected a non-empty tensor with at least one dimension, got shape (0, 1, 16, 16)"),
    (dict(example_input=NAN_X), ValueError, "example_input: expected finite values, got nan at index (1, 0, 3, 4)"),
    (dict(example_input=X.clone().index_fill_(0, torch.tensor([0]), -math.inf)), ValueError,
     "example_input: expected finite values, got -inf at index (0, 0, 0, 0)"),
    (dict(example_input="x"), TypeError, "example_input: expected a torch.Tensor, got str"),
]


@pytest.mark.parametrize("kwargs,kind,message", BAD)
def test_bad_arguments_name_the_argument(kwargs, kind, message):
    kwargs = {"example_input": X, **kwargs}
    with pytest.raises(kind) as info:
        optimize_for_inference(_digits(), **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("model,message", [
    (lambda: _with(_set, "features.0.weight", (2, 0, 1, 1), math.inf),
     "model: expected finite values, got inf at index (2, 0, 1, 1) of parameter 'features.0.weight'"),
    (lambda: _with(_set, "classifier.bias", (3,), math.nan),
     "model: expected finite values, got nan at index (3,) of parameter 'classifier.bias'"),
    (lambda: _with(_set, "features.4.running_var", (5,), math.nan),
     "model: expected finite values, got nan at index (5,) of normalization statistic 'features.4.running_var'"),
])
@pytest.mark.parametrize("example", [None, X])
def test_non_finite_weights_are_refused(model, message, example):
    # before: folded into every weight (no example) or every path "mismatched" (NaN != NaN) and
    # the model came back unoptimized without a word
    with pytest.raises(ValueError) as info:
        optimize_for_inference(model(), example, rounds=1)
    assert str(info.value) == message


def test_an_example_the_model_cannot_take_is_named():
    with pytest.raises(ValueError, match=re.escape("example_input: the model fails on a tensor of shape (1, 3, 16, 16) "
                                                   "(RuntimeError: Given groups=1, weight of size [4, 1, 3, 3]")):
        optimize_for_inference(_digits(), torch.randn(1, 3, 16, 16), rounds=1)


def test_fold_batchnorms_names_its_argument():
    from sepconv.optimize import fold_batchnorms

    with pytest.raises(TypeError) as info:  # before: AttributeError from deepcopy'd str's .eval
        fold_batchnorms("model")
    assert str(info.value) == "model: expected an nn.Module, got str"


def test_a_non_tensor_call_is_named():
    fast = optimize_for_inference(_digits())
    with pytest.raises(TypeError) as info:
        fast([[1.0, 2.0]])
    assert str(info.value) == "input: expected a torch.Tensor, got list"


def _convnet():  # layers that take unbatched (C, H, W) input too (BatchNorm2d does not)
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         sepconv.SeparableConv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()


@pytest.mark.parametrize("candidates", [("eager",), ("fused",), ("torchscript",), ("eager", "fused", "torchscript")])
def test_unbatched_input_runs_like_the_layers(candidates):
    # before: "required rank 4 tensor to use channels_last format" for an input the layers take
    model = _convnet()
    fast = optimize_for_inference(model, torch.randn(2, 3, 12, 12), rounds=1, candidates=candidates)
    x = torch.randn(3, 12, 12)
    with torch.no_grad():
        ref = model(x)
    out = fast(x)
    assert out.shape == (4, 12, 12)
    assert relative_error(out, ref) <= 1e-5


# ---- candidate paths that fail or mismatch are reported, never raised ----
def test_vgg_bn_at_96_does_not_raise_and_reports_the_failing_path():
    # oneDNN's adaptive average pool (in the TorchScript graph) refuses 3x3 -> 7x7; it raised
    model = vgg_bn()
    x = torch.randn(2, 3, 96, 96)
    fast = optimize_for_inference(model, x, rounds=1, candidates=("eager", "torchscript"))
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4
    assert set(fast.timings) | set(fast.rejected) | {fast.backend} == {"eager", "torchscript"}
    if "torchscript" in fast.rejected:
        assert fast.rejected["torchscript"].startswith("failed on the example input: RuntimeError: ")


def test_a_path_that_cannot_be_built_is_reported(monkeypatch):
    def broken_trace(*args, **kwargs):
        raise RuntimeError("tracing unavailable\non two lines")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    fast = optimize_for_inference(_digits(), X, rounds=1, candidates=("eager", "torchscript"))
    assert fast.backend == "eager" and fast.timings == {}
    assert fast.rejected == {"torchscript": "could not be built: RuntimeError: on two lines"}


class _Scaled(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 1.01


def test_a_mismatching_path_is_reported(monkeypatch):
    monkeypatch.setattr(torch.jit, "optimize_for_inference", _Scaled)
    fast = optimize_for_inference(_digits(), X, rounds=1, candidates=("eager", "torchscript"))
    assert fast.backend == "eager"
    assert fast.rejected == {"torchscript": "output differs from the original model's: relative error 0.01 > 0.0001"}


def test_fused_path_not_available_is_reported(monkeypatch):
    from sepconv import _fused

    monkeypatch.setattr(_fused, "load", lambda: None)
    monkeypatch.setattr(_fused, "error", lambda: "OSError: no compiler")
    fast = optimize_for_inference(_convnet(), torch.randn(1, 3, 8, 8), rounds=1, candidates=("eager", "fused"))
    assert fast.rejected == {"fused": "the fused kernels are not available here: OSError: no compiler"}
    fast = optimize_for_inference(_convnet(), torch.randn(3, 8, 8), rounds=1, candidates=("eager", "fused"))
    assert fast.rejected == {"fused": "needs a 4-D float32 example input, got 3-D float32"}


class _Flaky(nn.Module):
    """Right for its first ``good`` calls, then raises (a graph re-optimized after a few runs)."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def forward(self, x):
        self.good -= 1
        if self.good < 0:
            raise RuntimeError("late failure")
        return x * 2


def test_paths_failing_after_their_first_run_are_dropped():
    x = torch.ones(3)
    rejected = {}
    correct = D._check({"a": _Flaky(100), "b": _Flaky(1), "c": nn.Identity()}, x, x * 2, rejected)
    assert set(correct) == {"a"}
    assert rejected == {"b": "failed on the example input: RuntimeError: late failure",
                        "c": "output differs from the original model's: relative error 0.5 > 0.0001"}
    correct = {"a": _Flaky(100), "b": _Flaky(2), "c": _Flaky(100)}  # b fails in the timing
    timings = D._measure(correct, x, 3, rejected)
    assert set(timings) == {"a", "c"} and set(correct) == {"a", "c"}
    assert rejected["b"] == "failed on the example input: RuntimeError: late failure"


def test_when_every_path_fails_the_original_model_runs_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no tracing")))
    model = _digits()
    with pytest.warns(RuntimeWarning, match=re.escape("optimize_for_inference: no candidate path reproduced the "
                                                      "model's output; the returned module runs the original model")):
        fast = optimize_for_inference(model, X, rounds=1, candidates=("torchscript",))
    assert fast.backend == "eager" and fast.rejected == {"torchscript": "could not be built: RuntimeError: no tracing"}
    assert isinstance(fast.module.features[1], nn.BatchNorm2d)  # not folded: the model as checked
    with torch.no_grad():
        assert torch.equal(fast(X), model(X))


def test_nan_in_outputs_must_match_exactly():
    ref = torch.tensor([1.0, math.nan, math.inf, -2.0])
    assert relative_error(ref.clone(), ref) == 0.0
    assert relative_error(torch.tensor([1.0, 0.0, math.inf, -2.0]), ref) == math.inf  # a NaN hidden
    assert relative_error(torch.tensor([1.0, math.nan, -math.inf, -2.0]), ref) == math.inf
    assert relative_error(torch.tensor([1.0, math.nan, math.inf, -2.2]), ref) == pytest.approx(0.2 / math.sqrt(5))
    assert relative_error((ref,), ref) == math.inf and relative_error(ref[:2], ref) == math.inf
    # all finite (the unmasked path): ||out - ref|| / ||ref||, whatever the memory format
    finite = torch.tensor([3.0, -4.0, 0.0, 1e-3]).reshape(1, 4, 1, 1)
    out = (finite + torch.tensor([0.0, 0.5, -1.0, 0.0]).reshape(1, 4, 1, 1)).contiguous(memory_format=torch.channels_last)
    assert relative_error(out, finite) == pytest.approx(math.sqrt(1.25) / math.sqrt(25 + 1e-6), rel=1e-12)
    assert relative_error(out, finite.expand(2, 4, 1, 1)) == math.inf


# ---- saving, pickling and copying every backend ----
@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return mobilenet_v1(0.25, num_classes=10).eval(), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("backend,candidates", [
    ("eager", ("eager",)), ("fused", ("fused",)), ("torchscript", ("torchscript",)),
    ("fused+torchscript", ("fused", "torchscript")),
])
def test_every_backend_saves_loads_pickles_and_copies(mobilenet, monkeypatch, backend, candidates):
    # before: torch.save / pickle of a TorchScript backend raised "Tried to serialize object
    # __torch__...MobileNetV1 which does not have a __getstate__ method defined!"
    model, x = mobilenet
    fake = {"fused+torchscript": 1.0, "fused": 1.5}  # layers fuse (1.5 < 2), then this path wins
    monkeypatch.setattr(D, "interleaved", lambda fns, rounds, warmup=1: {k: fake.get(k, 2.0) for k in fns})
    fast = optimize_for_inference(model, x, rounds=1, candidates=candidates)
    assert fast.backend == backend
    expected = fast(x)
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    copies = [torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(fast)), copy.deepcopy(fast)]
    other = torch.randn(1, 3, 40, 40)  # another size: a traced path's eager fallback
    for loaded in copies:
        assert type(loaded) is InferenceModule and loaded.backend == backend
        assert loaded.rejected == fast.rejected and loaded.timings == fast.timings
        assert torch.equal(loaded(x), expected)
        with torch.no_grad():
            torch.testing.assert_close(loaded(other), model(other), rtol=1e-4, atol=1e-5)
    assert torch.equal(fast(x), expected)  # the original is untouched


def test_loading_a_fused_graph_without_the_kernels_runs_eager(mobilenet, monkeypatch):
    from sepconv import _fused

    model, x = mobilenet
    fake = {"fused+torchscript": 1.0, "fused": 1.5}
    monkeypatch.setattr(D, "interleaved", lambda fns, rounds, warmup=1: {k: fake.get(k, 2.0) for k in fns})
    fast = optimize_for_inference(model, x, rounds=1, candidates=("fused", "torchscript"))
    assert fast.backend == "fused+torchscript"
    data = pickle.dumps(fast)
    monkeypatch.setattr(_fused, "load", lambda: None)
    with pytest.warns(RuntimeWarning, match=re.escape("InferenceModule: the fused kernels are not available here; the "
                                                      "loaded model runs its eager path instead of 'fused+torchscript'")):
        loaded = pickle.loads(data)
    assert loaded.backend == "eager"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


def test_compile_backend_refuses_pickling_clearly():
    fast = InferenceModule(nn.Identity(), "compile", False, {})
    with pytest.raises(TypeError, match=re.escape("InferenceModule: a model on the 'compile' backend cannot be saved, "
                                                  "pickled or copied")):
        pickle.dumps(fast)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pickle.loads(pickle.dumps(InferenceModule(nn.Identity(), "eager", False, {})))


def test_a_model_in_training_mode_is_optimized_as_in_eval_mode_with_a_warning():
    """optimize_for_inference computes what model.eval() does; a model passed in training mode
    (BatchNorm on batch statistics) says so instead of silently differing, and stays as it was."""
    from sepconv import optimize_for_inference

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).train()
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    x = torch.randn(4, 3, 16, 16)
    with pytest.warns(RuntimeWarning, match=re.escape(
            "optimize_for_inference: the model (and 3 more modules) is in training mode: the result computes what model.eval() "
            "does (BatchNorm with its running statistics, Dropout off), not the training-mode outputs; call "
            "model.eval() first")):
        fast = optimize_for_inference(model, x, rounds=1, candidates=("eager",))
    assert model.training and all(m.training for m in model.modules())  # the user's model is untouched
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    model.eval()[1].train()  # one submodule in training mode: named
    with pytest.warns(RuntimeWarning, match=re.escape("optimize_for_inference: submodule '1' is in training mode: ")):
        optimize_for_inference(model, x, rounds=1, candidates=("eager",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimize_for_inference(model.eval(), x, rounds=1, candidates=("eager",))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_paths_are_checked_at_their_own_precision(dtype):
    """A float16/bfloat16 model's paths are checked to 4 x the dtype's epsilon, not float32's 1e-4
    (every TorchScript path was rejected for a difference of a few roundings: 1.1e-4)."""
    from sepconv import optimize_for_inference
    from sepconv.optimize.checks import relative_error, tolerance

    assert tolerance(dtype) == 4 * torch.finfo(dtype).eps and tolerance(torch.float32) == 1e-4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          sepconv.SeparableConv2d(16, 32, 3, padding=1)).eval().to(dtype)
    x = torch.randn(2, 3, 24, 24, dtype=dtype)
    fast = optimize_for_inference(model, x, rounds=1, candidates=("eager", "torchscript"))
    assert not any("output differs" in why for why in fast.rejected.values()), fast.rejected
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= tolerance(dtype)
