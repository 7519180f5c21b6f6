"""Graph-level BatchNorm folding (sepconv.graph) on real architectures and on the cases it must
leave alone, and its use by optimize_for_inference and convert."""

import copy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import fx, nn

import sepconv
from sepconv import convert, optimize_for_inference
from sepconv.graph import fold_conv_bn
from sepconv.optimize import fold_batchnorms

sys.path.insert(0, str(Path(__file__).parent))
from architectures import ARCHITECTURES, randomize_batchnorm, resnet_basic  # noqa: E402

F64 = torch.float64
# BatchNorms per architecture, counted by hand from tests/architectures.py; every one follows a conv
BATCHNORMS = {
    "resnet_basic": 14,  # stem 1; stage 1: 2 blocks x 2; stages 2-4: 1 block x (2 + downsample 1)
    "resnet_bottleneck": 20,  # stem 1; stage 1: (3 + downsample 1) + 3; stages 2-4: 3 + downsample 1
    "vgg_bn": 8,  # one per conv of configuration "A"
    "mobilenet_v2": 25,  # stem 1; t=1 block 2; 7 expanded blocks x 3; last 1x1 conv 1
    "se_net": 12,  # stem 1; stage 1: 2; stages 2-4: 2 + downsample 1
}
REASON_TRAIN = "in training mode: it normalizes with each batch's statistics (call model.eval() first)"
TRACE_ERROR = "TraceError: symbolically traced variables cannot be used as inputs to control flow"


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_batchnorm_of_an_architecture_is_folded_exactly(arch):
    model = ARCHITECTURES[arch]().double()
    assert _count_bn(model) == BATCHNORMS[arch]
    result = fold_conv_bn(model)
    folded = result.model
    assert _count_bn(folded) == 0 and _count_bn(model) == BATCHNORMS[arch]  # the original is untouched
    assert len(result.batchnorms) == BATCHNORMS[arch] and result.message == ""
    assert all(why.startswith("folded into '") for why in result.batchnorms.values()), result.batchnorms
    # the user's class and names: every module name is still there, each BatchNorm now an Identity
    assert type(folded) is type(model)
    names = dict(folded.named_modules())
    assert set(dict(model.named_modules())) <= set(names)
    assert all(isinstance(names[bn], nn.Identity) for bn in result.batchnorms)
    x = torch.randn(2, 3, 64, 64, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _close(folded(x), model(x)) <= 1e-10


def test_resnet_chains_follow_the_graph_not_the_attribute_order():
    result = fold_conv_bn(resnet_basic())
    assert result.batchnorms["layer2.0.bn1"] == "folded into 'layer2.0.conv1'"
    assert result.batchnorms["layer2.0.downsample.1"] == "folded into 'layer2.0.downsample.0'"
    chains = {c.bn: c for c in result.chains}
    assert chains["layer2.0.bn1"].activation == "relu"  # torch.relu in forward
    assert chains["layer2.0.bn2"].activation is None  # then the residual add


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_optimize_for_inference_folds_every_batchnorm(arch):
    model = ARCHITECTURES[arch]()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fast = optimize_for_inference(model, x, rounds=1, candidates=("eager",))
    assert _count_bn(fast) == 0
    assert len(fast.batchnorms) == BATCHNORMS[arch]
    assert all(why.startswith("folded into '") for why in fast.batchnorms.values()), fast.batchnorms
    with torch.no_grad():
        ref = model(x)
        assert float((fast(x) - ref).norm() / ref.norm()) <= 1e-4
    assert _count_bn(fold_batchnorms(model)) == 0


class LeftAlone(nn.Module):
    """One BatchNorm per case that must not be folded, and one that must."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)  # conv output also added
        self.bn_b = nn.BatchNorm2d(4)  # after an add: no conv before it
        self.conv_c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # conv called twice
        self.conv_d, self.bn_d = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)  # training mode
        self.conv_e, self.bn_e = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # BatchNorm called twice
        self.conv_f, self.bn_f = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)  # foldable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_a(x)
        y = self.bn_b(self.bn_a(a) + a)
        y = self.bn_c(self.conv_c(y)) + self.conv_c(y)
        y = self.bn_d(self.conv_d(y))
        y = self.bn_e(self.conv_e(y)) + self.bn_e(y)
        return torch.relu(self.bn_f(self.conv_f(y)))


def test_left_alone_batchnorms_are_reported_with_their_reason():
    model = randomize_batchnorm(LeftAlone()).double()
    model.bn_d.train()
    result = fold_conv_bn(model)
    assert result.batchnorms == {
        "bn_a": "the output of 'conv_a' is also used by add()",
        "bn_b": "no convolution before it: its input is add()",
        "bn_c": "'conv_c' is called at 2 places in forward (folding would change every call)",
        "bn_d": REASON_TRAIN,
        "bn_e": "called at 2 places in forward",
        "bn_f": "folded into 'conv_f'",
    }
    names = dict(result.model.named_modules())
    assert [n for n, m in names.items() if isinstance(m, nn.Identity)] == ["bn_f"]
    assert isinstance(names["bn_d"], nn.BatchNorm2d) and names["bn_d"].training
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    reference = copy.deepcopy(model)  # bn_d updates its statistics when called in training mode
    torch.testing.assert_close(result.model(x), reference(x), rtol=1e-10, atol=1e-10)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if y.sum() > 0:  # data-dependent control flow: fx cannot trace this
            y = -y
        return self.bn(self.conv(y))


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Untraceable()
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.inner(x)))


def test_untraceable_model_falls_back_to_sequential_pairs_with_a_message():
    model = randomize_batchnorm(Untraceable()).double()
    result = fold_conv_bn(model)
    message = f"could not trace Untraceable: {TRACE_ERROR}; folded only conv -> BatchNorm pairs inside nn.Sequential"
    assert result.message == message
    assert result.batchnorms == {"body.1": "folded into 'body.0'", "bn": message}
    assert isinstance(result.model.body[1], nn.Identity) and isinstance(result.model.bn, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-10, atol=1e-10)


def test_untraceable_submodule_is_kept_as_a_call_and_the_rest_folded():
    model = randomize_batchnorm(Outer()).double()
    result = fold_conv_bn(model)
    message = (f"could not trace 'inner' (Untraceable): {TRACE_ERROR}; "
               "folded only conv -> BatchNorm pairs inside nn.Sequential")
    assert result.message == message
    assert result.batchnorms == {"inner.body.1": "folded into 'inner.body.0'", "inner.bn": message,
                                 "bn": "folded into 'conv'"}
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-10, atol=1e-10)


def test_batchnorm_after_sepconv_layers_folds_into_their_output_factor():
    model = nn.Sequential(sepconv.SeparableConv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6),
                          sepconv.BlueprintSeparableConv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          sepconv.DepthwiseConv2d(6, 3, padding=1, bias=False), nn.BatchNorm2d(6))
    model = randomize_batchnorm(model).double()
    result = fold_conv_bn(model)
    assert result.batchnorms == {"1": "folded into '0.pointwise'", "3": "folded into '2.depthwise'",
                                 "6": "folded into '5'"}
    assert result.chains[1].activation == "4"
    x = torch.randn(2, 3, 9, 9, dtype=F64)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-10, atol=1e-10)


def test_aliased_batchnorm_and_tied_weights():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
            self.alias = self.bn  # the same BatchNorm under a second name
            self.twin = nn.Conv2d(3, 3, 3, padding=1)
            self.twin.weight = self.conv.weight  # a weight shared with another conv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.alias(self.conv(x)) + self.twin(x)

    model = randomize_batchnorm(Tied()).double()
    result = fold_conv_bn(model)
    assert result.batchnorms == {"bn": "folded into 'conv'"}
    assert isinstance(result.model.bn, nn.Identity) and isinstance(result.model.alias, nn.Identity)
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-10, atol=1e-10)


def test_batchnorm_whose_parameters_forward_reads_is_left():
    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) * self.bn.weight.sum()

    result = fold_conv_bn(Reads().eval())
    assert result.batchnorms == {"bn": "its parameters or statistics are also read directly in forward"}


def test_graph_module_only_when_asked():
    model = resnet_basic().double()
    result = fold_conv_bn(model, graph_module=True)
    assert isinstance(result.model, fx.GraphModule) and _count_bn(result.model) == 0
    assert "bn1" not in result.model.code
    x = torch.randn(1, 3, 32, 32, dtype=F64)
    with torch.no_grad():
        assert _close(result.model(x), model(x)) <= 1e-10
    assert not isinstance(fold_conv_bn(model).model, fx.GraphModule)


def test_single_layers_and_unused_batchnorms():
    assert fold_conv_bn(nn.BatchNorm2d(4)).batchnorms == {"": "no convolution before it: it is the whole model"}
    layer = sepconv.SeparableConv2d(4, 4, 3, norm_layer=nn.BatchNorm2d)
    assert fold_conv_bn(layer).batchnorms == {"norm": "inside the model (SeparableConv2d), which is kept whole"}
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    model.add_module("spare", nn.BatchNorm2d(3))  # called after the conv by Sequential, so it folds
    assert fold_conv_bn(model.eval()).batchnorms == {"spare": "folded into '0'"}

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.spare = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    assert fold_conv_bn(Unused().eval()).batchnorms == {"spare": "not called by the model's forward"}


def test_arguments_and_non_finite_statistics_are_refused():
    with pytest.raises(TypeError, match=r"^model: expected an nn.Module, got str$"):
        fold_conv_bn("model")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    model[1].running_var[0] = float("nan")
    with pytest.raises(ValueError, match=r"^layer '1': expected finite BatchNorm statistics, got NaN or Inf$"):
        fold_conv_bn(model)
    assert torch.isnan(model[1].running_var[0])  # nothing was changed


def test_convert_folds_graph_batchnorms_and_reports_them():
    model = resnet_basic().double()
    x = torch.randn(1, 3, 32, 32, dtype=F64)
    new, report = convert(model, example_input=x)
    assert _count_bn(new) == 0 and _count_bn(model) == BATCHNORMS["resnet_basic"]
    assert len(report.batchnorms) == BATCHNORMS["resnet_basic"]
    assert report.batchnorms["layer1.0.bn2"] == "folded into 'layer1.0.conv2'"
    assert report.output_error < 1e-10
    with torch.no_grad():
        assert _close(new(x), model(x)) <= 1e-10
    assert "| layer1.0.bn2 | folded into 'layer1.0.conv2' |" in report.to_markdown()
    assert "BatchNorms folded 14 of 14" in report.to_markdown()
    notes = {r.name: r.note for r in report.layers}
    assert notes["layer1.0.conv2"] == "BatchNorm 'layer1.0.bn2' folded"


def test_convert_leaves_a_training_mode_batchnorm_and_says_why():
    model = resnet_basic().double()
    model.layer1[0].bn2.train()
    with pytest.warns(RuntimeWarning, match=r"^convert: BatchNorm 'layer1.0.bn2' is in training mode, so it is not folded "
                                            r"into its conv .*; call model.eval\(\) first$"):
        new, report = convert(model, example_input=torch.randn(1, 3, 32, 32, dtype=F64))
    assert report.batchnorms["layer1.0.bn2"] == REASON_TRAIN
    assert isinstance(new.layer1[0].bn2, nn.BatchNorm2d) and _count_bn(new) == 1
    assert "BatchNorms folded 13 of 14" in report.to_markdown()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to fold, nothing to say
        _, report = convert(model, example_input=torch.randn(1, 3, 32, 32, dtype=F64), fold_bn=False)
    assert report.batchnorms == {}


def test_optimize_reports_the_norm_between_factors_and_the_batchnorm_after_a_layer():
    model = nn.Sequential(sepconv.SeparableConv2d(3, 6, 3, padding=1, norm_layer=nn.BatchNorm2d), nn.BatchNorm2d(6))
    model = randomize_batchnorm(model)
    fast = optimize_for_inference(model)
    assert fast.batchnorms == {"0.norm": "folded into '0.depthwise'", "1": "folded into '0.pointwise'"}
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_convert_inplace_changes_nothing_when_it_refuses():
    model = resnet_basic()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^budget: expected at least "):
        convert(model, budget=0.01, example_input=torch.randn(1, 3, 32, 32), inplace=True)
    assert _count_bn(model) == BATCHNORMS["resnet_basic"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
