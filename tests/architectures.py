"""Small, faithful versions of common CNN architectures for tests (no torchvision needed).

Each follows its torchvision (or paper) structure: module layout, where BatchNorm and
activations sit, residual adds, downsampling, pooling and classifier; only the widths and the
depth are small, so a test can run many architectures at many input sizes in seconds. Used to
check that whole-model transformations (e.g. ``optimize_for_inference``) give the same outputs
as the model they were made from.

- :func:`resnet_basic` / :func:`resnet_bottleneck`: ResNet with ``BasicBlock`` / ``Bottleneck``
  blocks (convs and BatchNorms as attributes, ``torch.relu`` in ``forward``, a strided 1x1 conv +
  BatchNorm ``downsample``, residual adds), 7x7 stride-2 stem, max pool, global average pool.
- :func:`resnet18` / :func:`resnet50` / :func:`resnet152`: the same classes at torchvision's full
  widths (64-512) and depths, 1000 classes, for conversion and profiling benchmarks.
- :func:`vgg_bn`: VGG-11 with BatchNorm (configuration "A") and ``nn.AdaptiveAvgPool2d((7, 7))``
  before the classifier, as torchvision's ``vgg11_bn`` (whose pool upsamples small inputs).
- :func:`mobilenet_v2`: inverted residuals (1x1 expansion, 3x3 depthwise, linear 1x1
  projection), ReLU6, ``Sequential(conv, bn, act)`` blocks, functional adaptive pooling.
- :func:`se_net`: ResNet basic blocks with squeeze-and-excitation (adaptive average pooling, a
  1x1 bottleneck, sigmoid gate multiplied into the residual branch).

Every builder takes ``num_classes`` and returns a module in eval mode with its BatchNorm
statistics randomized (:func:`randomize_batchnorm`), so folding them is not an identity.
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters; return ``model.eval()``."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
    return model.eval()


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3x3 convs, the second's output added to the input."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet v1.5: the stride on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * 4)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + identity)


class SEBasicBlock(BasicBlock):
    """A basic block whose residual branch is gated by squeeze-and-excitation before the add."""

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module = None) -> None:
        super().__init__(cin, width, stride, downsample)
        self.se = SqueezeExcite(width)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return torch.relu(out + identity)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): global average pool, 1x1 reduce, ReLU, 1x1 expand,
    sigmoid, channel-wise product with the input (torchvision's ``SqueezeExcitation``)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        squeezed = max(1, channels // reduction)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class ResNet(nn.Module):
    """torchvision's ``ResNet`` layout with stage widths ``widths`` and ``layers`` blocks each."""

    def __init__(self, block: type, layers: list, widths: list, num_classes: int = 10) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = [self._make_layer(block, w, n, stride=1 if i == 0 else 2) for i, (w, n) in enumerate(zip(widths, layers))]
        for i, stage in enumerate(stages, 1):
            setattr(self, f"layer{i}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_layer(self, block: type, width: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != width * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, width * block.expansion, stride),
                                       nn.BatchNorm2d(width * block.expansion))
        layers = [block(self.inplanes, width, stride, downsample)]
        self.inplanes = width * block.expansion
        layers += [block(self.inplanes, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_basic(num_classes: int = 10) -> nn.Module:
    """A ResNet-18-like network (one BasicBlock per stage), widths 8-32."""
    return randomize_batchnorm(ResNet(BasicBlock, [2, 1, 1, 1], [8, 16, 24, 32], num_classes))


def resnet_bottleneck(num_classes: int = 10) -> nn.Module:
    """A ResNet-50-like network (Bottleneck blocks, expansion 4), widths 4-16."""
    return randomize_batchnorm(ResNet(Bottleneck, [2, 1, 1, 1], [4, 8, 12, 16], num_classes))


def resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision's ``resnet18`` at full size: BasicBlocks ``[2, 2, 2, 2]``, widths 64-512."""
    return randomize_batchnorm(ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes))


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision's ``resnet50`` at full size: Bottlenecks ``[3, 4, 6, 3]``, widths 64-512 (x4 out)."""
    return randomize_batchnorm(ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes))


def resnet152(num_classes: int = 1000) -> nn.Module:
    """torchvision's ``resnet152`` at full size: Bottlenecks ``[3, 8, 36, 3]``, widths 64-512 (x4 out)."""
    return randomize_batchnorm(ResNet(Bottleneck, [3, 8, 36, 3], [64, 128, 256, 512], num_classes))


def se_net(num_classes: int = 10) -> nn.Module:
    """A ResNet with squeeze-and-excitation basic blocks (SE-ResNet-18-like), widths 8-32."""
    return randomize_batchnorm(ResNet(SEBasicBlock, [1, 1, 1, 1], [8, 16, 24, 32], num_classes))


class VGG(nn.Module):
    """torchvision's ``VGG``: ``features``, ``AdaptiveAvgPool2d((7, 7))``, a 3-layer classifier."""

    def __init__(self, cfg: list, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        layers: list = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(cin * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg_bn(num_classes: int = 10) -> nn.Module:
    """VGG-11 with BatchNorm (torchvision's ``vgg11_bn`` layout), widths 4-16 instead of 64-512."""
    cfg = [4, "M", 8, "M", 16, 16, "M", 16, 16, "M", 16, 16, "M"]
    return randomize_batchnorm(VGG(cfg, num_classes=num_classes))


def _conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` with ReLU6."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (skipped at ratio 1), 3x3 depthwise, linear 1x1
    projection; the input added back when the stride is 1 and the widths agree."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if expand_ratio == 1 else [_conv_bn_act(cin, hidden, 1)]
        layers += [_conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's ``MobileNetV2`` layout: (expansion t, channels c, repeats n, stride s) rows."""

    def __init__(self, settings: list, stem: int = 8, last: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        features = [_conv_bn_act(3, stem, stride=2)]
        cin = stem
        for t, c, n, s in settings:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn_act(cin, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 10) -> nn.Module:
    """A MobileNetV2 with the paper's strides (total 32) and small widths."""
    settings = [(1, 8, 1, 1), (6, 8, 2, 2), (6, 12, 2, 2), (6, 16, 1, 2), (6, 16, 1, 1), (6, 24, 1, 2)]
    return randomize_batchnorm(MobileNetV2(settings, num_classes=num_classes))


def mobilenet_v2_full(num_classes: int = 1000) -> nn.Module:
    """torchvision's ``mobilenet_v2()`` (width 1.0): stem 32, the paper's seven rows, last 1280."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    return randomize_batchnorm(MobileNetV2(settings, stem=32, last=1280, num_classes=num_classes))


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "vgg_bn": vgg_bn,
    "mobilenet_v2": mobilenet_v2,
    "se_net": se_net,
}
SIZES = (32, 64, 96, 112, 224)
