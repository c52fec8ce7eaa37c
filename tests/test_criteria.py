"""Group criteria: every criterion prunes exactly, gradient scores through to_torch equal scores from
the original PyTorch model, aggregation and normalization do what they say, bad data is refused."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import spa
from models_zoo.torch_models import TORCH_ZOO
from spa.criteria import (CRITERIA, combined, lamp, member_score_table, member_scores, normalization_scales, score_groups,
                          scored_members)
from spa.oracle import max_relative_error
from spa.runtime import run

TOLERANCE = 1e-4
DATA_CRITERIA = [name for name, c in CRITERIA.items() if c.needs]


def calibration(path, samples=8, seed=0) -> dict[str, np.ndarray]:
    """Random images for the zoo model at `path`, and random labels shaped for its first output
    (one class per sample, or per pixel for a per-pixel output)."""
    shape = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim][1:]
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((samples, *shape)).astype(np.float32)
    logits = run(path, {"input": images})[0]
    return {"input": images, "labels": rng.integers(0, logits.shape[1], (samples, *logits.shape[2:]))}


def assert_prunes_exactly(path, criterion):
    """The criterion changes which channels go, never how: the pruned model equals the original
    with the removed slices zeroed. Exported with BatchNorm kept, so bn_scale has its gammas; a
    model whose exactly prunable groups have no normalization must be refused by bn_scale."""
    analysis = spa.analyze(path)
    exact = [g for g in analysis.prunable if not g.approximate]
    if criterion == "bn_scale" and not any(normalization_scales(g, analysis.graph) for g in exact):
        with pytest.raises(spa.SpaError, match="no normalization scale"):
            spa.prune(path, target_flops=0.6, criterion=criterion, exact=True)
        return
    pruned, report = spa.prune(path, target_flops=0.6, criterion=criterion, exact=True, calib=calibration(path),
                               batch_size=4)
    assert report.flops_after < report.flops_before
    assert max_relative_error(path, pruned, report.removed) < TOLERANCE


# ----------------------------------------------------------------------------- the zeroing oracle
@pytest.mark.parametrize("criterion", list(CRITERIA))
@pytest.mark.parametrize("name, exporter", [("resnet_basic", "dynamo"), ("resnet_basic", "torchscript"),
                                            ("mobilenet_v2", "dynamo"), ("vit", "torchscript")])
def test_every_criterion_prunes_exactly(exports, criterion, name, exporter):
    assert_prunes_exactly(exports.get(name, exporter, training=True), criterion)


@pytest.mark.slow
@pytest.mark.parametrize("criterion", list(CRITERIA))
@pytest.mark.parametrize("name", list(TORCH_ZOO))
def test_every_criterion_prunes_the_zoo_exactly(exports, criterion, name):
    assert_prunes_exactly(exports.get(name, "dynamo", training=True), criterion)


def test_criteria_choose_differently(exports):
    """Scores are not all alike: the criteria pick different channels on the same model."""
    path = exports.get("resnet_basic", "dynamo", training=True)
    choices = set()
    for criterion in CRITERIA:
        _, report = spa.prune(path, target_flops=0.6, criterion=criterion, calib=calibration(path), batch_size=4)
        choices.add(str(report.removed))
    assert len(choices) >= len(CRITERIA) - 2  # l1 and bn_scale may agree where gammas dominate


# ----------------------------------------------------------------------------- to_torch == the torch model
def reference_statistics(model: torch.nn.Module, data: dict, batch_size: int, temperature: float):
    """Gradient statistics computed with plain autograd on the original torch model (eval mode),
    the way spa.gradients defines them: mean gradient, per-batch gradients, per-sample Fisher
    diagonal, Hessian times the mean gradient."""
    params = dict(model.named_parameters())
    x, y = torch.from_numpy(data["input"]), torch.from_numpy(data["labels"])

    def grads(xb, yb, create_graph=False):
        loss = F.cross_entropy(model(xb) / temperature, yb)
        return torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)

    def as_dict(tensors):
        return {name: t.detach().numpy().astype(np.float64) for name, t in zip(params, tensors)}

    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    weights = [len(yb) / len(y) for _, yb in batches]
    per_batch = [as_dict(grads(xb, yb)) for xb, yb in batches]
    mean = {n: sum(w * g[n] for w, g in zip(weights, per_batch)) for n in params}
    fisher = {n: np.zeros_like(mean[n]) for n in params}
    for i in range(len(y)):
        for n, g in as_dict(grads(x[i:i + 1], y[i:i + 1])).items():
            fisher[n] += g ** 2 / len(y)
    hessian_grad = {n: np.zeros_like(mean[n]) for n in params}
    for w, (xb, yb) in zip(weights, batches):
        first = grads(xb, yb, create_graph=True)
        inner = sum((f * torch.from_numpy(mean[n]).float()).sum() for n, f in zip(params, first))
        for n, h in as_dict(torch.autograd.grad(inner, list(params.values()))).items():
            hessian_grad[n] += w * h
    return {"grad": mean, "fisher": fisher, "hessian_grad": hessian_grad}, list(zip(weights, per_batch))


@pytest.mark.parametrize("name", ["conv_chain", "resnet_basic"])
@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_scores_through_to_torch_equal_scores_on_the_torch_model(exports, name, criterion):
    path = exports.get(name, "dynamo", training=True)
    analysis = spa.analyze(path)
    crit = CRITERIA[criterion]
    data = calibration(path, samples=6)
    got = score_groups(analysis, criterion, calib=data, batch_size=4)

    model = TORCH_ZOO[name].build(seed=0).eval()
    params = dict(model.named_parameters())
    for group in analysis.prunable:  # the dynamo export names weights after the torch parameters
        assert all(m.tensor in params for m in scored_members(group, analysis.graph)), group.describe()
    stats, per_batch = reference_statistics(model, data, batch_size=4, temperature=crit.temperature)
    for group in analysis.prunable:
        if crit.per_batch:
            table = sum(w * member_scores(group, analysis.graph, crit, {"grad": g}) for w, g in per_batch)
        else:
            table = member_scores(group, analysis.graph, crit, stats)
        want = combined(table, "sum", "max")
        np.testing.assert_allclose(got[group.id], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"{criterion}, group {group.id}")


# ----------------------------------------------------------------------------- aggregation, normalization
def test_aggregations_and_normalizations():
    table = np.array([[1.0, 2.0, 4.0], [3.0, 1.0, 2.0]])  # 2 members x 3 units
    cases = {
        ("sum", "none"): [4, 3, 6], ("mean", "none"): [2, 1.5, 3], ("max", "none"): [3, 2, 4], ("prod", "none"): [3, 2, 8],
        ("sum", "max"): [4 / 6, 3 / 6, 1], ("sum", "mean"): [4 / 13 * 3, 3 / 13 * 3, 6 / 13 * 3],
        ("sum", "size"): [4 / 3, 1, 2],
    }
    for (aggregate, normalize), want in cases.items():
        np.testing.assert_allclose(combined(table, aggregate, normalize), want, err_msg=f"{aggregate}/{normalize}")
    np.testing.assert_allclose(combined(np.array([[-2.0, 1.0]]), "sum", "max"), [-1, 0.5])  # GraSP can be negative


@pytest.mark.parametrize("aggregate", ["sum", "mean", "max", "prod"])
@pytest.mark.parametrize("normalize", ["none", "size", "max", "mean"])
def test_normalization_keeps_the_order_inside_each_group(exports, aggregate, normalize):
    path = exports.get("resnet_basic", "dynamo", training=True)
    analysis = spa.analyze(path)
    raw = score_groups(analysis, "l2", aggregate=aggregate, normalize="none")
    scores = score_groups(analysis, "l2", aggregate=aggregate, normalize=normalize)
    for g, s in scores.items():
        np.testing.assert_array_equal(np.argsort(s, kind="stable"), np.argsort(raw[g], kind="stable"))
    if normalize == "max":
        assert all(np.isclose(s.max(), 1.0) for s in scores.values())


def test_lamp_is_the_share_of_the_larger_weights():
    w = np.array([[0.5, -2.0], [1.0, 0.1]])
    squares = np.square(w).ravel()
    want = [s / squares[squares >= s].sum() for s in squares]
    np.testing.assert_allclose(lamp(w).ravel(), want)


def test_bn_scale_reads_the_gammas(exports):
    path = exports.get("resnet_basic", "dynamo", training=True)
    analysis = spa.analyze(path)
    graph = analysis.graph
    table = member_score_table(analysis, "bn_scale")
    for group in analysis.prunable:
        gammas = [m for m in group.params
                  if any(graph.nodes[i].op_type == "BatchNormalization" and graph.nodes[i].input[1] == m.tensor
                         for i in graph.tensors[m.tensor].consumers)]
        assert gammas and len(table[group.id]) == len(gammas)
        for row, m in zip(table[group.id], gammas):
            np.testing.assert_allclose(row, [np.abs(graph.value(m.tensor)[m.unit(u)]).mean() for u in range(group.units)])


def test_bn_scale_without_normalizations_says_so(exports):
    with pytest.raises(spa.SpaError, match="no normalization scale"):
        spa.prune(exports.get("resnet_basic", "dynamo"), ratio=0.5, criterion="bn_scale")  # BN folded at export


def test_pseudo_labels_are_the_model_predictions(exports):
    path = exports.get("conv_chain", "dynamo", training=True)
    data = calibration(path)
    predicted = run(path, {"input": data["input"]})[0].argmax(axis=1)
    analysis = spa.analyze(path)
    with_pseudo = score_groups(analysis, "snip", calib={"input": data["input"]}, pseudo_labels=True)
    with_labels = score_groups(analysis, "snip", calib={"input": data["input"], "labels": predicted})
    for g in with_labels:
        np.testing.assert_allclose(with_pseudo[g], with_labels[g], rtol=1e-6)


# ----------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def model(exports):
    return exports.get("conv_chain", "dynamo", training=True)


def test_data_criteria_need_data_and_labels(model):
    data = calibration(model)
    for criterion in DATA_CRITERIA:
        with pytest.raises(spa.SpaError, match=f"'{criterion}' needs calibration data"):
            spa.prune(model, ratio=0.5, criterion=criterion)
        with pytest.raises(spa.SpaError, match="needs labels.*--pseudo-labels"):
            spa.prune(model, ratio=0.5, criterion=criterion, calib={"input": data["input"]})
    spa.prune(model, ratio=0.5, criterion="l1", calib={"input": data["input"]})  # weight criteria ignore it


@pytest.mark.parametrize("arrays, words", [
    (lambda d: {"labels": d["labels"]}, ["no array 'input'"]),
    (lambda d: {**d, "extra": d["labels"]}, ["'extra' is not an input", "input"]),
    (lambda d: {**d, "input": d["input"][:, :2]}, ["shape", "(N, 3, 32, 32)"]),
    (lambda d: {**d, "input": d["input"][0]}, ["shape"]),
    (lambda d: {**d, "labels": d["labels"][:3]}, ["'labels' must be 8 integer"]),
    (lambda d: {**d, "labels": d["labels"].astype(np.float32)}, ["'labels' must be 8 integer"]),
    (lambda d: {**d, "labels": d["labels"] + 100}, ["class indices in [0, 10)"]),
    (lambda d: {**d, "input": d["input"].astype(np.int64)}, ["int64", "float32"]),
])
def test_bad_calibration_data_is_refused(model, arrays, words):
    with pytest.raises(spa.SpaError) as error:
        spa.prune(model, ratio=0.5, criterion="taylor", calib=arrays(calibration(model)))
    for word in words:
        assert word in str(error.value)


def test_bad_calibration_files_are_refused(model, tmp_path):
    (tmp_path / "text.npz").write_text("not an archive")
    np.save(tmp_path / "one.npy", calibration(model)["input"])
    for name, words in (("text.npz", "not an .npz archive"), ("one.npy", "single array"), ("missing.npz", "no such")):
        with pytest.raises(spa.SpaError, match=words):
            spa.prune(model, ratio=0.5, criterion="snip", calib=str(tmp_path / name))


def spa_cli(*args):
    return subprocess.run([sys.executable, "-m", "spa.cli", *map(str, args)], capture_output=True, text=True)


def test_command_line_criteria(model, tmp_path):
    data = calibration(model)
    np.savez(tmp_path / "calib.npz", **data)
    out = tmp_path / "out.onnx"
    result = spa_cli("prune", model, "-o", out, "--criterion", "taylor", "--calib", tmp_path / "calib.npz",
                     "--target-flops", "0.5", "--aggregate", "mean", "--normalize", "mean", "--calib-batch", "4",
                     "--no-latency")
    assert result.returncode == 0, result.stderr
    assert "FLOPs: 0.4" in result.stdout or "FLOPs: 0.5" in result.stdout
    assert out.exists()
    np.savez(tmp_path / "unlabeled.npz", input=data["input"])
    for args, words in ((["--criterion", "grasp"], "needs calibration data"),
                        (["--criterion", "obd", "--calib", tmp_path / "unlabeled.npz"], "needs labels"),
                        (["--aggregate", "median"], "unknown aggregation 'median'"),
                        (["--normalize", "l2"], "unknown normalization 'l2'"),
                        (["--calib-batch", "0", "--criterion", "snip", "--calib", tmp_path / "calib.npz"], "--calib-batch")):
        result = spa_cli("prune", model, "-o", tmp_path / "refused.onnx", *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert words in result.stderr
        assert not (tmp_path / "refused.onnx").exists()
