"""Small random-initialized PyTorch models for testing SPA.

Every builder takes ``seed=0``, returns an ``nn.Module`` in eval mode, and randomizes every
BatchNorm's affine parameters and running statistics so that a folded BN is not an identity.
Inputs are NCHW with batch 2 and 32x32 images (see ``TORCH_ZOO``).
"""
from __future__ import annotations

from models_zoo.entry import ZooEntry, entry
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ZooEntry", "TORCH_ZOO", "TORCH_ZOO_LARGE", "build", "init_model",
    "conv_chain", "resnet_basic", "resnet_bottleneck", "resnext", "mobilenet_v2", "densenet",
    "inception", "shufflenet_v2", "se_resnet", "unet", "vgg", "vit", "resnet50",
]


# --------------------------------------------------------------------------------------------
# Initialization
# --------------------------------------------------------------------------------------------

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def init_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministically re-initialize ``model`` and put it in eval mode.

    Conv/Linear: Kaiming-normal (fan_in, ReLU gain) weights, small random biases.
    BatchNorm: weight ~ U(0.5, 1.5), bias ~ N(0, 0.1), running_mean ~ N(0, 0.1),
    running_var ~ U(0.5, 1.5). LayerNorm: weight ~ U(0.5, 1.5), bias ~ N(0, 0.1).
    Other parameters (class token, position embedding) ~ N(0, 0.02).
    """
    g = torch.Generator().manual_seed(seed)

    def normal_(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform_(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    done: set[int] = set()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                w = m.weight
                if isinstance(m, nn.ConvTranspose2d):
                    # weight is (in, out/groups, kh, kw); each output sums over about
                    # in/groups * kh*kw / (sh*sw) inputs
                    stride = m.stride[0] * m.stride[1]
                    fan_in = max(1, w.shape[0] // m.groups * w[0, 0].numel() // stride)
                else:
                    fan_in = w[0].numel()
                normal_(w, (2.0 / fan_in) ** 0.5)
                done.add(id(w))
                if m.bias is not None:
                    normal_(m.bias, 0.05)
                    done.add(id(m.bias))
            elif isinstance(m, _NORMS):
                if m.affine:
                    uniform_(m.weight, 0.5, 1.5)
                    normal_(m.bias, 0.1)
                    done.update((id(m.weight), id(m.bias)))
                if m.track_running_stats:
                    normal_(m.running_mean, 0.1)
                    uniform_(m.running_var, 0.5, 1.5)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                uniform_(m.weight, 0.5, 1.5)
                normal_(m.bias, 0.1)
                done.update((id(m.weight), id(m.bias)))
        for p in model.parameters():
            if id(p) not in done:
                normal_(p, 0.02)
    return model.eval()


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv2d (no bias, 'same' padding) + BatchNorm2d (+ activation)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# conv_chain
# --------------------------------------------------------------------------------------------

class ConvChain(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16), conv_bn(16, 32, stride=2), conv_bn(32, 32), conv_bn(32, 64, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def conv_chain(seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU chain, global average pool, Linear head."""
    return init_model(ConvChain(), seed)


# --------------------------------------------------------------------------------------------
# ResNets (basic, bottleneck, ResNeXt, SE)
# --------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, se: bool = False):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout) if se else None
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1,
                 width_per_group: int | None = None):
        super().__init__()
        width = planes if width_per_group is None else width_per_group * groups
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class SqueezeExcite(nn.Module):
    """Global avg pool -> Linear reduce -> ReLU -> Linear expand -> Sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1).flatten(1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class SqueezeExciteConv(nn.Module):
    """SE written with 1x1 convolutions (keeps the N x C x 1 x 1 shape)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        s = self.expand(F.relu(self.reduce(self.pool(x))))
        return x * torch.sigmoid(s)


class SEBasicBlockConv(BasicBlock):
    """Basic block whose SE uses 1x1 convs instead of Linear layers."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__(cin, planes, stride, se=False)
        self.se = SqueezeExciteConv(planes * self.expansion)


class ResNet(nn.Module):
    def __init__(self, block: Callable[..., nn.Module], expansion: int, planes: list[int],
                 blocks: list[int], stem: int = 16, num_classes: int = 10, **block_kw):
        super().__init__()
        self.stem = conv_bn(3, stem)
        layers: list[nn.Module] = []
        cin = stem
        for i, (p, n) in enumerate(zip(planes, blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(cin, p, stride, **block_kw))
                cin = p * expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_basic(seed: int = 0) -> nn.Module:
    """ResNet with basic blocks, two stages with stride-2 1x1-conv+BN downsample shortcuts."""
    return init_model(ResNet(BasicBlock, 1, [16, 32, 64], [2, 1, 1]), seed)


def resnet_bottleneck(seed: int = 0) -> nn.Module:
    """ResNet with bottleneck blocks (expansion 4) and downsample shortcuts."""
    return init_model(ResNet(Bottleneck, 4, [8, 16], [2, 1]), seed)


def resnext(seed: int = 0) -> nn.Module:
    """ResNeXt: bottleneck blocks with grouped 3x3 convs (groups=4 and 8 per stage)."""

    class _ResNeXt(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(3, 16)
            self.layers = nn.Sequential(
                Bottleneck(16, 8, 1, groups=4, width_per_group=4),   # 16 wide, 4 groups, -> 32
                Bottleneck(32, 8, 1, groups=4, width_per_group=4),   # identity shortcut
                Bottleneck(32, 16, 2, groups=8, width_per_group=4),  # 32 wide, 8 groups, -> 64
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))

    return init_model(_ResNeXt(), seed)


def se_resnet(seed: int = 0) -> nn.Module:
    """ResNet basic blocks with squeeze-excitation (Linear SE and 1x1-conv SE variants)."""

    class _SEResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(3, 16)
            self.layers = nn.Sequential(
                BasicBlock(16, 16, 1, se=True),
                BasicBlock(16, 32, 2, se=True),
                SEBasicBlockConv(32, 32, 1),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))

    return init_model(_SEResNet(), seed)


# --------------------------------------------------------------------------------------------
# MobileNetV2
# --------------------------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),  # depthwise
            conv_bn(hidden, cout, 1, act=None),                                # linear projection
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        cfg = [  # (expand, cout, repeats, stride)
            (1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2), (4, 32, 1, 1)]
        layers: list[nn.Module] = [conv_bn(3, 16, stride=1, act=nn.ReLU6)]
        cin = 16
        for t, c, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 64, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(seed: int = 0) -> nn.Module:
    """MobileNetV2: inverted residuals (1x1 expand, depthwise 3x3, linear 1x1), ReLU6, adds."""
    return init_model(MobileNetV2(), seed)


# --------------------------------------------------------------------------------------------
# DenseNet
# --------------------------------------------------------------------------------------------

class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 producing ``growth`` new channels (pre-activation)."""

    def __init__(self, cin: int, growth: int, bn_size: int = 2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, cin: int, growth: int, n: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2, 2))


class DenseNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = DenseBlock(16, 8, 3)      # 16 -> 40
        self.trans1 = Transition(40, 20)
        self.block2 = DenseBlock(20, 8, 2)      # 20 -> 36
        self.norm = nn.BatchNorm2d(36)
        self.fc = nn.Linear(36, num_classes)

    def forward(self, x):
        x = self.block2(self.trans1(self.block1(self.stem(x))))
        x = F.relu(self.norm(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def densenet(seed: int = 0) -> nn.Module:
    """DenseNet: two dense blocks (concat of growing feature maps) with a transition layer.

    Pre-activation BN-ReLU-Conv, so BatchNorms follow a Concat and are not foldable into a Conv.
    """
    return init_model(DenseNet(), seed)


# --------------------------------------------------------------------------------------------
# Inception
# --------------------------------------------------------------------------------------------

class InceptionBlock(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.b1 = conv_bn(cin, c1, 1)
        self.b3 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3, 3))
        self.b5 = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 5))
        self.bd = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 3), conv_bn(c5, c5, 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, cp, 1))
        self.cout = c1 + c3 + 2 * c5 + cp

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bd(x), self.bp(x)], 1)


class Inception(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.inc1 = InceptionBlock(16, 8, 8, 16, 4, 8, 8)       # -> 48
        self.pool = nn.MaxPool2d(2)
        self.inc2 = InceptionBlock(48, 16, 12, 16, 4, 8, 8)     # -> 56
        self.fc = nn.Linear(56, num_classes)

    def forward(self, x):
        x = self.inc2(self.pool(self.inc1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def inception(seed: int = 0) -> nn.Module:
    """Two Inception blocks: 1x1, 1x1->3x3, 1x1->5x5, 1x1->3x3->3x3, maxpool->1x1, concatenated."""
    return init_model(Inception(), seed)


# --------------------------------------------------------------------------------------------
# ShuffleNetV2
# --------------------------------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision-style channel shuffle: view -> transpose -> view."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        bf = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                conv_bn(cin, bf, 1))
            b2in = cin
        else:
            assert cin == cout
            self.branch1 = None
            b2in = bf
        self.branch2 = nn.Sequential(
            conv_bn(b2in, bf, 1),
            conv_bn(bf, bf, 3, stride, groups=bf, act=None),
            conv_bn(bf, bf, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.stage2 = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(32, 64, 2), ShuffleUnit(64, 64, 1))
        self.conv5 = conv_bn(64, 64, 1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.conv5(self.stage3(self.stage2(self.stem(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2(seed: int = 0) -> nn.Module:
    """ShuffleNetV2 units: chunk split, branch, concat, view/transpose/view channel shuffle."""
    return init_model(ShuffleNetV2(), seed)


# --------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------

def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))


class UNet(nn.Module):
    """Two-level UNet. Upsampling: ConvTranspose2d on the deep level, bilinear interpolate on the
    shallow level; skip connections are concatenated."""

    def __init__(self, cin: int = 3, num_classes: int = 4):
        super().__init__()
        self.enc1 = double_conv(cin, 16)          # 32x32
        self.enc2 = double_conv(16, 32)           # 16x16
        self.bottom = double_conv(32, 64)         # 8x8
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = double_conv(64, 32)           # cat(up2, enc2)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = double_conv(32 + 16, 16)      # cat(up1, enc1)
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def unet(seed: int = 0) -> nn.Module:
    """Small UNet (2 levels) with ConvTranspose2d and bilinear Upsample up-paths; per-pixel map."""
    return init_model(UNet(), seed)


# --------------------------------------------------------------------------------------------
# VGG
# --------------------------------------------------------------------------------------------

class VGG(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16), conv_bn(16, 16), nn.MaxPool2d(2),      # 16x16
            conv_bn(16, 32), conv_bn(32, 32), nn.MaxPool2d(2),     # 8x8
            conv_bn(32, 32), nn.MaxPool2d(2),                      # 4x4
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def vgg(seed: int = 0) -> nn.Module:
    """VGG-style conv stack with MaxPools, Flatten of a 32x4x4 map into a Linear head."""
    return init_model(VGG(), seed)


# --------------------------------------------------------------------------------------------
# ViT
# --------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)
        v = self.v(x).reshape(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, img: int = 32, patch: int = 8, dim: int = 64, depth: int = 2,
                 heads: int = 4, num_classes: int = 10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        n = (img // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)          # B, N, D
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(seed: int = 0) -> nn.Module:
    """Hand-written ViT: 8x8 patch conv, class token, pos embedding, 2 pre-norm blocks (4-head
    attention with separate q/k/v Linears, GELU MLP), LayerNorm, Linear head on the class token."""
    return init_model(ViT(), seed)


# --------------------------------------------------------------------------------------------
# Large: torchvision ResNet-50
# --------------------------------------------------------------------------------------------

def resnet50(seed: int = 0) -> nn.Module:
    """torchvision ResNet-50 (weights=None, 1000 classes), randomized BNs; for benchmarks."""
    from torchvision.models import resnet50 as tv_resnet50

    torch.manual_seed(seed)
    return init_model(tv_resnet50(weights=None, num_classes=1000), seed)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

def _entry(fn: Callable[..., nn.Module], shape=(2, 3, 32, 32), large: bool = False) -> ZooEntry:
    return entry(fn, shape, large)


TORCH_ZOO: dict[str, ZooEntry] = {
    fn.__name__: _entry(fn)
    for fn in (conv_chain, resnet_basic, resnet_bottleneck, resnext, mobilenet_v2, densenet,
               inception, shufflenet_v2, se_resnet, unet, vgg, vit)
}
"""Small models for the default sweep (all 32x32 inputs, batch 2)."""

TORCH_ZOO_LARGE: dict[str, ZooEntry] = {
    "resnet50": _entry(resnet50, (2, 3, 224, 224), large=True),
}
"""Large models, for benchmarks only (not part of the default sweep)."""


def build(name: str, seed: int = 0) -> nn.Module:
    """Build a zoo model (small or large) by name."""
    zoo = {**TORCH_ZOO, **TORCH_ZOO_LARGE}
    if name not in zoo:
        raise KeyError(f"unknown zoo model {name!r}; known: {sorted(zoo)}")
    return zoo[name].build(seed=seed)
