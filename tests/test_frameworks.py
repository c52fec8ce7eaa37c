"""Every zoo model of every framework prunes to a valid, smaller model, and comes back to PyTorch.

For each framework's exports: pruned at 0.3 and 0.5 the model runs in onnxruntime with the
original output shapes; convolutional models lose at least 25% of their parameters at 0.5; the
zeroing oracle holds for exact groups; to_torch of the original and of the pruned model agrees
with onnxruntime, takes a gradient step, and writes its weights back into ONNX faithfully.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import spa
from spa.oracle import max_relative_error
from spa.runtime import random_inputs, run
from tests.conftest import zoo_cases

TRANSFORMERS = {"vit"}  # their parameters sit mostly in the hidden size, pruned approximately


@pytest.mark.parametrize("framework, name", zoo_cases())
def test_prunes_to_a_valid_smaller_model(framework_exports, framework, name):
    path = framework_exports.get(framework, name)
    feeds = random_inputs(onnx.load(path))
    shapes = [o.shape for o in run(path, feeds)]
    for ratio in (0.3, 0.5):
        pruned, report = spa.prune(path, ratio=ratio, round_to=1)  # every group, small ones too
        assert [o.shape for o in run(pruned, feeds)] == shapes
        drop = 1 - report.params_after / report.params_before
        print(f"{framework}/{name} ratio {ratio}: parameters -{drop:.0%}, FLOPs "
              f"-{1 - report.flops_after / report.flops_before:.0%}")
        if ratio == 0.5 and name not in TRANSFORMERS:
            assert drop >= 0.25, f"{framework}/{name}: only {drop:.0%} of the parameters went at ratio 0.5"
    exact, report = spa.prune(path, ratio=0.5, exact=True)
    if report.groups_pruned:
        assert max_relative_error(path, exact, report.removed) < 1e-4


def _torch_outputs(torch_model, feeds):
    import torch

    with torch.no_grad():
        out = torch_model.module(*[torch.from_numpy(feeds[n]) for n in torch_model.input_names])
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]


def _close(got, want, rtol=1e-4):
    for a, b in zip(got, want):
        assert np.abs(a - b).max() <= rtol * max(np.abs(b).max(), 1e-6), np.abs(a - b).max()


@pytest.mark.parametrize("framework, name", zoo_cases())
def test_to_torch_trains_and_writes_back(framework_exports, framework, name):
    import torch

    path = framework_exports.get(framework, name)
    pruned, _ = spa.prune(path, ratio=0.5)
    for model in (onnx.load(path), pruned):
        feeds = random_inputs(model)
        torch_model = spa.to_torch(model)
        _close(_torch_outputs(torch_model, feeds), run(model, feeds))
        # a gradient step changes the weights, and write_back carries them into ONNX exactly
        module = torch_model.module.train()
        params = [p for p in module.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        out = module(*[torch.from_numpy(feeds[n]) for n in torch_model.input_names])
        (out[0] if isinstance(out, (tuple, list)) else out).square().mean().backward()
        torch.optim.SGD(params, lr=1e-2).step()
        assert any(not torch.equal(a, b) for a, b in zip(before, params))
        module.eval()
        written = spa.write_back(model, torch_model)
        _close(run(written, feeds), _torch_outputs(torch_model, feeds), rtol=1e-5)
