"""H2SPG: whole removal structures trained to zero while training, then erased exactly."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from spa.errors import SpaError  # noqa: E402
from spa.graph import Graph  # noqa: E402
from spa.train import H2SPG, StructureTraining, train, trainable_structures  # noqa: E402


def residual_net():
    """A stem and two residual blocks of 8 channels, for 1x8x8 digits."""
    from torch import nn

    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), Block(), Block(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from frontends.torch import export

    return export(residual_net(), torch.zeros(2, 1, 8, 8), tmp_path_factory.mktemp("h2spg") / "res.onnx", training=True)


@pytest.fixture(scope="module")
def data():
    from models_zoo import digits

    d = digits.load(0)
    return {"input": d.x_train[:256], "labels": d.y_train[:256]}, {"input": d.x_test[:128], "labels": d.y_test[:128]}


def test_each_block_branch_is_one_group(model):
    job = StructureTraining(model)
    assert len(job.structures) == 2 and not job.skipped
    assert all(s.kind == "residual branch" for s in job.structures)
    # every weight of a branch, whole: 2 convs (weight, bias) and 2 BatchNorms (scale, shift; not
    # their running statistics)
    assert [len(group) for group in job.groups] == [8, 8]
    assert not any("input_mean" in name or "input_var" in name for params in job.params for name in params)


def test_a_branch_that_is_not_zero_at_zero_is_left_out():
    """relu(x + (conv(x) + 1)): with the conv's weight zero the branch still outputs 1."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.ones((), np.float32))),
             helper.make_node("Add", ["c", "one"], ["branch"], name="shift"),
             helper.make_node("Add", ["x", "branch"], ["y"], name="join")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    found, skipped = trainable_structures(Graph(helper.make_model(graph, ir_version=8,
                                                                  opset_imports=[helper.make_opsetid("", 17)])), {"w"})
    assert found == [] and "not zero with its parameters zero" in skipped[0]


def test_erase_n_structures_while_training(model, data):
    pruned, report = train(model, data[0], val=data[1], optimizer="h2spg", erase=1, epochs=2, log=None)
    erased = report.prune["erased"]
    assert len(erased) == 1 and report.zero_groups == 1
    assert report.max_relative_error <= 1e-5  # the erased model computes what the trained one does
    assert report.flops_after < report.flops_before and report.params_after < report.params_before
    assert len(pruned.graph.node) < len(onnx.load(model).graph.node)
    assert report.val_accuracy is not None  # how accurate: bench/bench_erase.py, not 8 steps of a test


def test_target_flops_erases_until_it_is_met(model, data):
    _, report = train(model, data[0], optimizer="h2spg", target_flops=0.8, epochs=1, log=None)
    assert report.prune["erased"] and report.flops_after / report.flops_before <= 0.8


@pytest.mark.parametrize("options, message", [({"optimizer": "dhspg", "erase": 1}, "goes with --optimizer h2spg"),
                                              ({"optimizer": "h2spg", "erase": 2}, "from 1 to 1")])
def test_erase_needs_h2spg_and_a_count_it_can_reach(model, data, options, message):
    with pytest.raises(SpaError, match=message):
        train(model, data[0], epochs=1, log=None, **options)


def test_registered():
    from spa.train import OPTIMIZERS

    assert OPTIMIZERS["h2spg"] is H2SPG


def test_cli(model, data, tmp_path, capsys):
    from spa.cli import main

    np.savez(tmp_path / "train.npz", **data[0])
    out = tmp_path / "erased.onnx"
    assert main(["train", str(model), "--data", str(tmp_path / "train.npz"), "--optimizer", "h2spg", "--erase", "1",
                 "--epochs", "1", "-o", str(out)]) == 0
    assert "1 of 2" in capsys.readouterr().out and out.exists()
    assert main(["train", str(model), "--data", str(tmp_path / "train.npz"), "--erase", "1", "--epochs", "1",
                 "-o", str(tmp_path / "x.onnx")]) == 2
    assert "goes with --optimizer h2spg" in capsys.readouterr().err
