"""Pruning targets: FLOPs and parameter budgets land within 3%, steps re-score and stay exact,
isomorphic classes share one ratio, bad requests are refused."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import onnx
import pytest

import spa
import spa.api
from models_zoo.torch_models import TORCH_ZOO
from spa.criteria import score_groups
from spa.oracle import max_relative_error
from spa.targets import Selection, Target, choose, cost_after, structure

TOLERANCE = 1e-4
LANDING = 0.03  # a target is met within 3% of the asked value


def assert_lands(report, kind: str, fraction: float):
    before, after = (report.flops_before, report.flops_after) if kind == "flops" else (report.params_before, report.params_after)
    assert abs(after / before - fraction) <= LANDING * fraction, f"{kind}: {after / before:.4f} for {fraction}"


def assert_exact(path, pruned, report):
    if not report.approximate:
        assert max_relative_error(path, pruned, report.removed) < TOLERANCE


def zoo_cases():
    return ([pytest.param(name, "dynamo", id=f"{name}-dynamo") for name in TORCH_ZOO]
            + [pytest.param(name, "torchscript", id=f"{name}-torchscript")
               for name in ("resnet_bottleneck", "shufflenet_v2", "vit")])


@pytest.mark.parametrize("name, exporter", zoo_cases())
def test_flops_and_parameter_targets_land(exports, name, exporter):
    path = exports.get(name, exporter)
    for kind, fraction in (("flops", 0.5), ("flops", 0.7), ("params", 0.5)):
        pruned, report = spa.prune(path, **{f"target_{kind}": fraction})
        assert_lands(report, kind, fraction)
        assert_exact(path, pruned, report)


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "inception", "vit"])
def test_counted_cost_equals_the_rewritten_model(exports, name):
    """The search counts FLOPs and parameters on shrunk shapes, without rewriting: the counts must
    be those of the model the rewriter writes."""
    analysis = spa.analyze(exports.get(name, "dynamo"))
    scores = score_groups(analysis, "l1")
    for kind in ("flops", "params"):
        chosen = choose(analysis, scores, Selection(Target(kind, 0.6), "global"))
        _, report = spa.apply(analysis, chosen, check=False)
        assert cost_after(analysis, chosen, kind) == (report.flops_after if kind == "flops" else report.params_after)


def test_local_scope_prunes_every_group_alike(exports):
    path = exports.get("vgg", "dynamo")
    _, report = spa.prune(path, target_flops=0.5, scope="local", round_to=1)
    assert_lands(report, "flops", 0.5)
    shares = [1 - ch["after"] / ch["before"] for ch in report.channels]
    assert max(shares) - min(shares) < 0.2  # one ratio, floored per group (and a few units to land)


def test_round_to_holds_with_a_target(exports):
    path = exports.get("mobilenet_v2", "dynamo")
    pruned, report = spa.prune(path, target_flops=0.6, round_to=8)
    assert report.flops_after < report.flops_before
    assert all(ch["after"] % 8 == 0 or ch["after"] == ch["before"] for ch in report.channels)
    assert_exact(path, pruned, report)


# ----------------------------------------------------------------------------- steps
def test_steps_rescore_the_pruned_model(exports):
    from spa.criteria import CRITERIA, Criterion

    path = exports.get("resnet_basic", "dynamo")
    scored_sizes = []

    class Recording(Criterion):  # l1, recording the size of each model it scores
        name = "l1"

        def scores(self, analysis, groups, context):
            scored_sizes.append(spa.metrics.count_params(analysis.graph))
            return CRITERIA["l1"].scores(analysis, groups, context)

    pruned, report = spa.prune(path, target_flops=0.5, steps=3, criterion=Recording())
    assert len(scored_sizes) == 3 and scored_sizes[0] > scored_sizes[1] > scored_sizes[2]
    assert_lands(report, "flops", 0.5)


@pytest.mark.parametrize("name, exporter", [("resnet_basic", "dynamo"), ("densenet", "torchscript"),
                                            ("mobilenet_v2", "dynamo")])
def test_steps_choose_differently_and_stay_exact(exports, name, exporter):
    """Re-scoring matters: once some channels are gone, the weights that read them score
    differently. The report names slices of the original model, and the oracle holds across steps."""
    path = exports.get(name, exporter)
    one = spa.prune(path, target_flops=0.5, criterion="l2")[1]
    pruned, three = spa.prune(path, target_flops=0.5, criterion="l2", steps=3)
    assert one.removed != three.removed
    assert_lands(three, "flops", 0.5)
    assert max_relative_error(path, pruned, three.removed) < TOLERANCE
    shapes = {t.name: list(t.dims) for t in onnx.load(path).graph.initializer}
    after = {t.name: list(t.dims) for t in pruned.graph.initializer}
    for entry in three.removed:
        assert max(entry["indices"]) < shapes[entry["tensor"]][entry["axis"]]
        assert after[entry["tensor"]][entry["axis"]] == shapes[entry["tensor"]][entry["axis"]] - len(entry["indices"])


def test_steps_with_a_local_ratio_remove_the_ratio_of_the_original(exports):
    path = exports.get("resnet_bottleneck", "dynamo")
    pruned, report = spa.prune(path, ratio=0.5, steps=2, round_to=1)
    for ch in report.channels:
        assert ch["after"] == ch["before"] - math.floor(0.5 * ch["before"] + 1e-9)
    assert max_relative_error(path, pruned, report.removed) < TOLERANCE


# ----------------------------------------------------------------------------- isomorphic
def test_isomorphic_classes_lose_the_same_share(exports):
    path = exports.get("resnet_bottleneck", "dynamo")
    analysis = spa.analyze(path)
    classes: dict[tuple, list] = {}
    for g in analysis.prunable:
        classes.setdefault(structure(g, analysis.graph), []).append(g)
    assert any(len(members) > 1 for members in classes.values()) and len(classes) > 1
    pruned, report = spa.prune(path, ratio=0.5, scope="global", isomorphic=True, round_to=1)
    removed = {ch["group"]: ch["before"] - ch["after"] for ch in report.channels}
    for members in classes.values():
        total = sum(g.units for g in members)
        assert sum(removed.get(g.id, 0) for g in members) == math.floor(0.5 * total)
    _, plain = spa.prune(path, ratio=0.5, scope="global", round_to=1)
    assert plain.removed != report.removed
    assert max_relative_error(path, pruned, report.removed) < TOLERANCE


def test_isomorphic_target(exports):
    path = exports.get("resnet_bottleneck", "dynamo")
    pruned, report = spa.prune(path, target_flops=0.5, isomorphic=True)
    assert_lands(report, "flops", 0.5)


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("options, words", [
    (dict(target_flops=0.0), "--target-flops"),
    (dict(target_flops=1.5), "--target-flops"),
    (dict(target_params=float("nan")), "--target-params"),
    (dict(ratio=0.3, target_flops=0.5), "only one of"),
    (dict(target_flops=0.5, steps=0), "--steps"),
    (dict(target_flops=0.5, steps=1.5), "--steps"),
    (dict(ratio=0.3, scope="local", isomorphic=True), "--isomorphic"),
    (dict(target_flops=0.5, max_ratio=1.0), "--max-ratio"),
    (dict(target_flops=0.01), "out of reach"),
])
def test_bad_targets_are_refused(exports, options, words):
    with pytest.raises(spa.SpaError, match=words):
        spa.prune(exports.get("conv_chain", "dynamo"), **options)


def test_command_line_targets(exports, tmp_path):
    path = exports.get("resnet_basic", "dynamo")
    out = tmp_path / "out.onnx"
    run = lambda *args: subprocess.run([sys.executable, "-m", "spa.cli", "prune", path, "-o", out, "--no-latency", *args],  # noqa: E731
                                       capture_output=True, text=True)
    result = run("--target-params", "0.6", "--steps", "2", "--isomorphic")
    assert result.returncode == 0, result.stderr
    assert "parameters: 0.5" in result.stdout or "parameters: 0.6" in result.stdout
    out.unlink()
    for args, words in ((["--target-flops", "2"], "--target-flops"), (["--steps", "0"], "--steps"),
                        (["--ratio", "0.2", "--target-flops", "0.5"], "only one of")):
        result = run(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert words in result.stderr and not out.exists()


def test_targets_are_fractions_of_the_original():
    assert Target.from_options(flops=0.5).at_step(1, 2) == pytest.approx(0.75)
    assert Target.from_options(ratio=0.4).at_step(1, 2) == pytest.approx(0.2)
    assert Target.from_options() == Target("ratio", 0.0)
    assert np.isclose(Target.from_options(params=0.3).at_step(3, 3), 0.3)
