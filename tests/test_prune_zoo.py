"""Every torch zoo model, from both exporters, prunes exactly: the zeroing oracle holds."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

import spa
from frontends.torch import EXPORTERS
from models_zoo.torch_models import TORCH_ZOO
from spa.oracle import max_relative_error
from spa.runtime import random_inputs, run

TOLERANCE = 1e-4  # of the output scale


def removed_per_dim(report) -> dict[tuple[str, int], int]:
    return {(r["tensor"], r["axis"]): len(r["indices"]) for r in report.removed}


def assert_shapes_follow_report(original: str, pruned: onnx.ModelProto, report):
    """Every parameter in the pruned model is its original minus exactly the reported slices."""
    before = {t.name: list(t.dims) for t in onnx.load(original).graph.initializer}
    after = {t.name: list(t.dims) for t in pruned.graph.initializer}
    for (tensor, axis), count in removed_per_dim(report).items():
        if tensor in before and tensor in after:
            assert after[tensor][axis] == before[tensor][axis] - count, (tensor, axis)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(TORCH_ZOO))
def test_zoo_prune_equals_zeroed_original(exports, name, exporter):
    path = exports.get(name, exporter)
    analysis = spa.analyze(path)
    exact = [g for g in analysis.prunable if not g.approximate]
    assert exact, f"{name}: no exactly prunable group found"
    for ratio in (0.25, 0.5):
        for scope in ("local", "global"):
            pruned, report = spa.prune(path, ratio=ratio, scope=scope, exact=True, round_to=1)
            assert report.params_after < report.params_before
            error = max_relative_error(path, pruned, report.removed)
            assert error < TOLERANCE, f"{name}/{exporter} ratio {ratio} {scope}: oracle error {error:.2e}"
            assert_shapes_follow_report(path, pruned, report)
            if scope == "local":
                for ch in report.channels:
                    assert ch["after"] == ch["before"] - math.floor(ratio * ch["before"] + 1e-9)


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", ["resnet_bottleneck", "shufflenet_v2", "mobilenet_v2", "vit", "unet"])
def test_older_opsets_prune_exactly(exports, name, opset):
    """Opsets 13 to 17 put axes and split sizes in attributes where newer ones use inputs."""
    path = exports.get(name, "torchscript", opset=opset)
    assert onnx.load(path).opset_import[0].version == opset
    pruned, report = spa.prune(path, ratio=0.5, exact=True)
    assert report.groups_pruned > 0
    assert max_relative_error(path, pruned, report.removed) < TOLERANCE


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", [n for n in TORCH_ZOO if n == "vit"])
def test_approximate_groups_prune_to_a_valid_model(exports, name, exporter):
    """Hidden channels under LayerNorm cannot pass the oracle; the model must run with the same
    output shapes and the asked channel counts."""
    path = exports.get(name, exporter)
    analysis = spa.analyze(path)
    approximate = [g for g in analysis.prunable if g.approximate]
    assert approximate
    pruned, report = spa.prune(path, ratio=0.5, round_to=1)
    assert set(report.approximate) >= {g.id for g in approximate}
    feeds = random_inputs(pruned)
    assert [o.shape for o in run(pruned, feeds)] == [o.shape for o in run(path, feeds)]
    for ch in report.channels:
        assert ch["after"] == ch["before"] - ch["before"] // 2
    assert_shapes_follow_report(path, pruned, report)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_ratio_zero_changes_nothing(exports, exporter):
    path = exports.get("resnet_bottleneck", exporter)
    pruned, report = spa.prune(path, ratio=0.0)
    assert report.params_after == report.params_before and report.removed == []
    feeds = random_inputs(pruned)
    np.testing.assert_array_equal(run(pruned, feeds)[0], run(path, feeds)[0])


def test_round_to_keeps_multiples(exports):
    path = exports.get("mobilenet_v2", "dynamo")
    pruned, report = spa.prune(path, ratio=0.3, round_to=8)
    assert report.channels
    for ch in report.channels:
        assert ch["after"] % 8 == 0 or ch["after"] == ch["before"]
        assert ch["after"] >= ch["before"] - math.floor(0.3 * ch["before"])  # never past the ratio
    assert max_relative_error(path, pruned, report.removed) < TOLERANCE


def test_keep_protects_a_node(exports):
    path = exports.get("conv_chain", "dynamo")
    conv = next(n.name for n in onnx.load(path).graph.node if n.op_type == "Conv")
    kept_weight = next(n.input[1] for n in onnx.load(path).graph.node if n.name == conv)
    _, report = spa.prune(path, ratio=0.5, keep=[conv], round_to=1)  # its 16 channels: whole at auto
    assert all(r["tensor"] != kept_weight for r in report.removed)
    _, unprotected = spa.prune(path, ratio=0.5, round_to=1)
    assert any(r["tensor"] == kept_weight for r in unprotected.removed)


def test_global_scope_caps_every_group(exports):
    path = exports.get("resnet_basic", "dynamo")
    _, report = spa.prune(path, ratio=0.6, scope="global", max_ratio=0.7, round_to=1)
    for ch in report.channels:
        assert ch["after"] >= ch["before"] - math.floor(0.7 * ch["before"])
    removed = sum(ch["before"] - ch["after"] for ch in report.channels)
    total = sum(g.units for g in spa.analyze(path).prunable)
    assert removed == math.floor(0.6 * total)
