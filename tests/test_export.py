"""torch.compile and ONNX export (run in onnxruntime) of every layer kind."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import sepconv

onnxruntime = pytest.importorskip("onnxruntime")


def _model_2d():
    return nn.Sequential(
        sepconv.DepthwiseConv2d(4, 3, depth_multiplier=2, padding="same"),
        sepconv.SeparableConv2d(8, 8, 4, stride=2, padding="same", padding_mode="reflect",
                                norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU),
        sepconv.BlueprintSeparableConv2d(8, 6, 3, rank=2, padding=1, padding_mode="replicate"),
        sepconv.SpatiallySeparableConv2d(6, 6, (3, 5), rank=3, stride=2, padding="same", padding_mode="circular"),
        sepconv.SpatiallySeparableConv2d(6, 4, 3, rank=4, padding=1),
    ).eval()


def _run_onnx(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("make,shape", [
    (_model_2d, (2, 4, 17, 19)),
    (lambda: nn.Sequential(sepconv.SeparableConv1d(4, 6, 4, stride=2, padding="same"),
                           sepconv.BlueprintSeparableConv1d(6, 4, 3, padding=1, padding_mode="reflect")).eval(), (2, 4, 21)),
    (lambda: nn.Sequential(sepconv.SeparableConv3d(4, 6, 3, padding="same"),
                           sepconv.DepthwiseConv3d(6, 2, stride=2, padding="same")).eval(), (1, 4, 6, 7, 8)),
], ids=["2d", "1d", "3d"])
def test_onnx_export_runs_in_onnxruntime(make, shape):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(*shape)
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(_run_onnx(model, x), expected, rtol=1e-4, atol=1e-5)


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = _model_2d()
    x = torch.randn(2, 4, 17, 19)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_traced_onnx_export_recomputes_same_padding_per_size():
    """The tracing exporter with dynamic height and width: 'same' padding with a stride follows
    each input's size in onnxruntime (it had the example's pads frozen in)."""
    import io
    import warnings

    torch.manual_seed(0)
    layer = sepconv.SeparableConv2d(8, 16, 3, stride=2, padding="same").eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.randn(1, 8, 32, 32),), f, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {2: "h", 3: "w"}})
    session = onnxruntime.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    for h, w in ((33, 35), (32, 31), (9, 10)):
        x = torch.randn(1, 8, h, w)
        with torch.no_grad():
            torch.testing.assert_close(torch.as_tensor(session.run(None, {"x": x.numpy()})[0]), layer(x), rtol=1e-4, atol=1e-5)
