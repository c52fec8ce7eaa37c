"""Small models trained here on real data: scikit-learn's handwritten digits (8x8, 10 classes).

The data ships inside scikit-learn, so the benchmarks and tests that measure accuracy need no
download. Each model trains in seconds on a CPU. `trained_onnx` builds, trains and exports one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

IMAGE_SHAPE = (1, 8, 8)
CLASSES = 10


@dataclass
class Digits:
    x_train: np.ndarray  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray


def load(seed: int = 0, test_fraction: float = 0.3) -> Digits:
    """The 1,797 digits, shuffled with `seed` and split into train and test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(len(y) * (1 - test_fraction))
    return Digits(x[:cut], y[:cut], x[cut:], y[cut:])


def build(name: str, seed: int = 0):
    """A torch model for 1x8x8 digits: `resnet`, `resnet_deep` (9 basic blocks: three stages of
    three at 16, 32 and 64 channels), `mobilenet_v2` or `mlp`."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def conv_bn(cin, cout, k=3, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU6() if act == "relu6" else nn.ReLU()) if act else nn.Sequential(*layers)

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1, act=False))
            self.short = conv_bn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.body = nn.Sequential(conv_bn(cin, hidden, 1, act="relu6"),
                                      conv_bn(hidden, hidden, 3, stride, groups=hidden, act="relu6"),
                                      conv_bn(hidden, cout, 1, act=False))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    head = lambda c: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, CLASSES))  # noqa: E731
    if name == "resnet":
        return nn.Sequential(conv_bn(1, 32), Basic(32, 32, 1), Basic(32, 64, 2), Basic(64, 64, 1),
                             Basic(64, 128, 2), head(128))
    if name == "resnet_deep":
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for b in range(3):
                blocks.append(Basic(cin, cout, 2 if stage and not b else 1))
                cin = cout
        return nn.Sequential(conv_bn(1, 16), *blocks, head(64))
    if name == "mobilenet_v2":
        return nn.Sequential(conv_bn(1, 32, act="relu6"), Inverted(32, 16, 1, 1), Inverted(16, 24, 1, 4),
                             Inverted(24, 24, 1, 4), Inverted(24, 48, 2, 4), Inverted(48, 48, 1, 4),
                             Inverted(48, 64, 2, 4), conv_bn(64, 256, 1, act="relu6"), head(256))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, CLASSES))
    raise KeyError(f"no digits model '{name}' (choose from {', '.join(MODELS)})")


MODELS = ("resnet", "resnet_deep", "mobilenet_v2", "mlp")


def train(model, data: Digits, epochs: int = 30, lr: float = 3e-3, batch: int = 64, seed: int = 0):
    """Adam with cosine decay and cross-entropy; returns the model in eval mode."""
    import torch

    torch.manual_seed(seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(y) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(batch):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX model (path or ModelProto) in onnxruntime."""
    from spa.runtime import run, session

    sess = session(model)
    logits = run(model, {sess.get_inputs()[0].name: x}, sess)[0]
    return float((logits.argmax(axis=1) == y).mean())


def trained_onnx(name: str, path, exporter: str = "dynamo", epochs: int = 30, seed: int = 0,
                 training_export: bool = False) -> str:
    """Build, train on digits and export `name` to `path`; reuses `path` if it already exists."""
    if os.path.exists(path):
        return os.fspath(path)
    import torch

    from frontends.torch import export

    model = train(build(name, seed), load(seed), epochs=epochs, seed=seed)
    return export(model, torch.zeros(2, *IMAGE_SHAPE), path, exporter=exporter, training=training_export)
