"""ATO (Auto-Train-Once): the Gumbel-sigmoid masks, the FLOPs penalty, SPA's FLOPs model over
the groups, and the exact prune of the trained, masked model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spa.graph import Graph
from spa.metrics import count_flops
from spa.runtime import run
from spa.targets import cost_after
from spa.train import ATO, Dataset, GroupFlops, SparseTraining, flops_penalty, gumbel_sigmoid


def test_gumbel_sigmoid_masks_are_binary_forward_and_pass_gradients_back():
    logits = torch.linspace(-3, 3, 200, requires_grad=True)
    masks = gumbel_sigmoid(logits, tau=0.5, generator=torch.Generator().manual_seed(0))
    assert set(masks.detach().unique().tolist()) == {0.0, 1.0}
    assert 0.2 < float(masks.detach().mean()) < 0.8  # the noise samples both sides of a logit near 0
    (masks * torch.arange(1.0, 201.0)).sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad > 0).all()  # straight through the sigmoid
    deterministic = gumbel_sigmoid(torch.tensor([-0.1, 0.1]), noise=False)
    assert deterministic.tolist() == [0.0, 1.0]


def test_flops_penalty_is_zero_at_the_target_and_grows_on_both_sides():
    ratios = torch.tensor([0.1, 0.3, 0.45, 0.5, 0.55, 0.7, 1.0])
    penalty = flops_penalty(ratios, 0.5)
    assert float(penalty[3]) == 0.0
    assert (penalty[:3] > 0).all() and (penalty[4:] > 0).all()
    assert (penalty[:3].diff() < 0).all() and (penalty[3:].diff() > 0).all()


@pytest.fixture(scope="module")
def digits():
    from models_zoo import digits

    return digits.load(0)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    from frontends.torch import export
    from models_zoo import digits

    return export(digits.build("resnet"), torch.zeros(2, 1, 8, 8), tmp_path_factory.mktemp("ato") / "resnet.onnx",
                  training=True)


def test_group_flops_is_spa_count_of_the_pruned_shapes_and_lands_targets(resnet):
    job = SparseTraining(resnet)
    flops = job.flops
    rng = np.random.default_rng(0)
    for share in (0.2, 0.5, 0.8):
        zero = rng.random(len(job.units)) < share
        keep = [torch.from_numpy(~zero[flops.column == c]).double() for c in range(len(flops.group_ids))]
        exact = cost_after(job.analysis, flops.removed(zero), "flops")
        assert float(flops.relative(keep)) * flops.full == pytest.approx(exact, rel=1e-9)
    for target in (0.3, 0.5, 0.7):
        zero = flops.choose(target, rng.random(len(job.units)))
        assert abs(flops.counted(zero) / flops.full - target) <= 0.03 * target
    keep = [torch.ones(int((flops.column == c).sum()), requires_grad=True) for c in range(len(flops.group_ids))]
    flops.relative(keep).backward()
    assert all(k.grad is not None and (k.grad > 0).all() for k in keep)  # every channel costs FLOPs


def ato_run(path, digits, steps: int, target: float = 0.5, **settings):
    """ATO in a plain torch loop, as a user would write it."""
    job = SparseTraining(path)
    held_out = Dataset([digits.x_train[-128:]], digits.y_train[-128:])
    optimizer = ATO(job.module.parameters(), job.groups, lr=0.05, target_flops=target, flops=job.flops, **settings)
    optimizer.bind(job.module, held_out, F.cross_entropy)
    job.module.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, len(digits.x_train) - 128, (32,), generator=generator).numpy()
        optimizer.zero_grad()
        F.cross_entropy(job.module(torch.from_numpy(digits.x_train[index])), torch.from_numpy(digits.y_train[index])).backward()
        optimizer.step()
    return job, optimizer


def test_controller_pulls_the_masked_flops_towards_the_target(resnet, digits):
    job, optimizer = ato_run(resnet, digits, steps=16, target=0.4, start_step=100, controller_every=1,
                             controller_lr=0.05, flops_weight=5.0)
    assert not optimizer.frozen
    assert optimizer.flops_left() < 0.8  # from all channels kept (FLOPs 1.0) at the start
    assert int((optimizer.group_masks == 0).sum()) > 0


def test_pruned_model_equals_the_trained_masked_model(resnet, digits):
    job, optimizer = ato_run(resnet, digits, steps=12, start_step=4, freeze_step=8, controller_every=1)
    assert optimizer.frozen
    x = torch.from_numpy(digits.x_test[:64])
    job.module.eval()
    with torch.no_grad():
        masked = job.module(x).numpy()  # the masks still on the module
    optimizer.finish()
    assert not any(name.endswith(".original") for name, _ in job.module.named_parameters())  # masks taken off
    result = job.prune({"input": digits.x_test[:64]})
    pruned = run(result.model, {"input": digits.x_test[:64]})[0]
    assert np.abs(pruned - masked).max() <= 1e-5 * np.abs(masked).max()
    removed = sum(len(u) for u in result.removed.values())
    assert removed == int((optimizer.group_masks == 0).sum()) > 0  # exactly the masked channels went
    ratio = count_flops(Graph(result.model)) / count_flops(Graph(result.trained))
    assert abs(ratio - 0.5) <= 0.03 * 0.5


def test_ato_needs_a_flops_target_and_the_flops_model(resnet):
    from spa.errors import SpaError

    job = SparseTraining(resnet)
    with pytest.raises(SpaError, match="FLOPs target"):
        ATO(job.module.parameters(), job.groups, lr=0.1, flops=job.flops)
    with pytest.raises(SpaError, match="FLOPs model"):
        ATO(job.module.parameters(), job.groups, lr=0.1, target_flops=0.5)
