"""HESSO: progressive selection to the exact target, the exact prune after it, and accuracy kept."""
from __future__ import annotations

import pytest
import torch

from spa.train import HESSO, get_optimizer, train


def test_hesso_zeroes_the_lowest_saliency_groups_gradually_and_keeps_them_zero():
    weight = torch.nn.Parameter(torch.tensor([[4.0, 4.0], [0.1, 0.1], [3.0, 3.0], [0.2, 0.2]]))
    groups = [[(weight, 0, [row])] for row in range(4)]
    optimizer = HESSO([weight], groups, lr=0.1, momentum=0.0, target_sparsity=0.5, start_step=2,
                      pruning_periods=2, pruning_steps=4)
    history = []
    for _ in range(10):
        weight.grad = torch.full_like(weight, 0.01)
        optimizer.step()
        history.append(weight.detach().abs().sum(dim=1).tolist())
    assert all(row[1] > 0 for row in history[:2])  # warm-up: the base step only
    assert history[2][1] > 0 and history[3][1] == 0  # period 1: the smallest group halved, then zero
    assert history[4][3] > 0 and history[5][3] == 0  # period 2: the next smallest
    assert all(row[1] == 0 and row[3] == 0 and row[0] > 0 and row[2] > 0 for row in history[5:])
    assert optimizer.group_sparsity == 0.5


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    from frontends.torch import export
    from models_zoo import digits

    return export(digits.build("mlp"), torch.zeros(2, 1, 8, 8), tmp_path_factory.mktemp("mlp") / "mlp.onnx",
                  training=True)


def test_hesso_trains_to_the_target_and_prunes_exactly(mlp):
    from models_zoo import digits

    data = digits.load(0)
    pruned, report = train(mlp, {"input": data.x_train, "labels": data.y_train}, optimizer="hesso",
                           val={"input": data.x_test, "labels": data.y_test}, target_sparsity=0.5, epochs=4, log=None)
    assert get_optimizer("hesso") == ("hesso", HESSO) and report.optimizer == "hesso"
    assert report.zero_groups == -(-report.groups // 2)  # the target, exactly
    assert report.max_relative_error <= 1e-5 and report.params_after < 0.7 * report.params_before
    assert report.val_accuracy > 0.8  # chance is 0.1
    assert digits.accuracy(pruned, data.x_test, data.y_test) == pytest.approx(report.val_accuracy)
