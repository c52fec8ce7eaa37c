"""OBSPA: compensation equals the least-squares optimum, costs are the true error increase, the
greedy order, data-free and calibrated modes, bounded-memory streaming, and a zoo model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import spa
from spa import obspa, synthetic
from spa.obspa import hessians
from spa.activations import Network, RuntimeNetwork
from spa.api import apply
from spa.errors import SpaError
from spa.runtime import random_inputs, run
from tests.rules.graphs import Builder, group_of

TINY_DAMP = 1e-10  # enough to make H invertible, too small to move the least-squares solution


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tensors are tiny: one thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def outputs(model, x: np.ndarray) -> np.ndarray:
    return run(model, {"X": x})[0].astype(np.float64)


def least_squares(features: np.ndarray, target: np.ndarray, intercept: bool) -> np.ndarray:
    """The best approximation of `target` (rows) from the kept `features` (rows)."""
    if intercept:
        features = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(features, target, rcond=None)
    return features @ coef


def prune_three_ways(model, x, chosen_units, tensor, axis, damp=TINY_DAMP):
    """Outputs of the model, of plain removal and of OBSPA removal (calibrated on x)."""
    analysis = spa.analyze(model)
    group = group_of(analysis, tensor, axis)
    chosen = {group.id: np.array(chosen_units)}
    with obspa.Obspa(analysis, calib={"X": x}, damp=damp) as o:
        compensated, _ = apply(analysis, chosen, new_values=o.compensation(chosen))
    plain, _ = apply(analysis, chosen)
    return outputs(model, x), outputs(plain, x), outputs(compensated, x)


def relu(a):
    return np.maximum(a, 0)


# ---------------------------------------------------------------------------- linear layers
def linear_model(kind: str, rng_seed: int = 0):
    """X (200, 10) -> MatMul+Add (12) -> Relu -> the layer under test (5 outputs) -> Y."""
    b = Builder(seed=rng_seed)
    x = b.input((200, 10))
    h = b.op("Relu", [b.linear(x, 12, name="l1", bias=True)], name="act")
    if kind == "matmul+add":
        b.output(b.linear(h, 5, name="l2", bias=True))
    elif kind == "matmul-transposed":  # h @ W^T with W (out, in), as some exporters write nn.Linear
        weight = b.op("Transpose", [b.weight("l2.W", (5, 12))], name="l2_t", perm=[1, 0])
        b.output(b.op("Add", [b.op("MatMul", [h, weight], name="l2"), b.weight("l2.B", (5,))], name="l2_bias"))
    elif kind == "gemm":
        b.output(b.op("Gemm", [h, b.weight("l2.W", (5, 12)), b.weight("l2.C", (5,))], name="l2",
                      transB=1, alpha=0.7, beta=1.3))
    else:  # Gemm with a (in, out) weight, no bias: the compensation has no intercept
        b.output(b.op("Gemm", [h, b.weight("l2.W", (12, 5))], name="l2"))
    return b.build()


@pytest.mark.parametrize("kind", ["matmul+add", "matmul-transposed", "gemm", "gemm-no-bias"])
def test_linear_compensation_is_the_least_squares_optimum(kind):
    model = linear_model(kind)
    x = np.random.default_rng(1).standard_normal((200, 10)).astype(np.float32)
    removed = [1, 4, 7, 8]
    y, y_plain, y_obspa = prune_three_ways(model, x, removed, "l1.W", 1)

    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    hidden = relu(x @ weights["l1.W"] + weights["l1.B"]).astype(np.float64)
    kept = np.setdiff1d(np.arange(12), removed)
    y_best = least_squares(hidden[:, kept], y, intercept=kind != "gemm-no-bias")

    error = np.linalg.norm(y - y_obspa)
    assert error < 0.9 * np.linalg.norm(y - y_plain)
    assert error == pytest.approx(np.linalg.norm(y - y_best), rel=1e-4)
    assert np.linalg.norm(y_obspa - y_best) < 1e-4 * np.linalg.norm(y)


# ---------------------------------------------------------------------------- convolutions
def conv_model(**attrs):
    """X (16, 3, 8, 8) -> Conv 3x3 (6) -> Relu -> Conv 3x3 (4, `attrs`) -> Y."""
    b = Builder(seed=2)
    x = b.input((16, 3, 8, 8))
    h = b.op("Relu", [b.conv(x, 6, k=3, name="c1")], name="act")
    inputs = [h, b.weight("c2.W", (4, 6, 3, 3)), b.weight("c2.B", (4,))]
    b.output(b.op("Conv", inputs, name="c2", **attrs))
    return b.build()


def conv_features(hidden: np.ndarray, kernel, strides, dilations, pads) -> np.ndarray:
    """The unfolded input of a 2-D Conv, one row per output position (channel-major features)."""
    padded = F.pad(torch.from_numpy(hidden), (pads[1], pads[3], pads[0], pads[2]))
    columns = F.unfold(padded, kernel, dilation=dilations, stride=strides)
    return columns.transpose(1, 2).reshape(-1, columns.shape[1]).numpy()


@pytest.mark.parametrize("attrs, pads", [
    (dict(strides=[2, 2], pads=[0, 1, 1, 0]), [0, 1, 1, 0]),
    (dict(auto_pad="SAME_UPPER", strides=[2, 2]), [0, 0, 1, 1]),
    (dict(dilations=[2, 2], pads=[2, 2, 2, 2]), [2, 2, 2, 2]),
])
def test_conv_compensation_is_the_least_squares_optimum(attrs, pads):
    model = conv_model(**attrs)
    x = np.random.default_rng(3).standard_normal((16, 3, 8, 8)).astype(np.float32)
    removed = [0, 3]
    y, y_plain, y_obspa = prune_three_ways(model, x, removed, "c1.W", 0)

    hidden = relu(run(model_upto_hidden(model), {"X": x})[0]).astype(np.float64)
    kept = np.setdiff1d(np.arange(6), removed)
    rows = conv_features(hidden[:, kept], (3, 3), attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1]), pads)
    y_rows = y.transpose(0, 2, 3, 1).reshape(-1, 4)
    best = least_squares(rows, y_rows, intercept=True)
    error, best_error = np.linalg.norm(y - y_obspa), np.linalg.norm(y_rows - best)
    assert error < 0.9 * np.linalg.norm(y - y_plain)
    assert error == pytest.approx(best_error, rel=1e-4)


@pytest.mark.parametrize("shape, attrs, pads", [
    ((2, 3, 9, 8), dict(strides=[2, 1], pads=[0, 1, 2, 0]), [0, 1, 2, 0]),
    ((2, 3, 9, 8), dict(auto_pad="SAME_LOWER", strides=[2, 3], dilations=[1, 2]), [1, 2, 1, 1]),
    ((2, 3, 7, 7), dict(auto_pad="VALID", dilations=[2, 2]), [0, 0, 0, 0]),
    ((2, 4, 11), dict(strides=[2], pads=[1, 2], dilations=[2]), [1, 2]),
    ((2, 4, 11), dict(auto_pad="SAME_UPPER", strides=[3]), [0, 1]),
])
def test_unfolded_conv_inputs_are_torchs_unfold(shape, attrs, pads):
    """The numpy unfold OBSPA builds Hessians from gives torch's F.unfold rows, 1-D and 2-D, with
    explicit and automatic pads (begins, then ends), strides and dilations."""
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    kernel = (3,) * (len(shape) - 2)
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=list(kernel), **attrs)
    rows = np.concatenate(list(hessians.row_chunks(node, x, kernel)))
    n = len(kernel)
    strides, dilations = attrs.get("strides", [1] * n), attrs.get("dilations", [1] * n)
    if n == 1:  # torch's unfold is 2-D: a height of 1
        x, kernel, pads, strides, dilations = x[:, :, None], (1, 3), [0, pads[0], 0, pads[1]], [1, *strides], [1, *dilations]
    np.testing.assert_array_equal(rows, conv_features(x, kernel, strides, dilations, pads))


def model_upto_hidden(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with the first conv's output as the output."""
    hidden = onnx.ModelProto()
    hidden.CopyFrom(model)
    del hidden.graph.output[:]
    hidden.graph.output.append(onnx.helper.make_tensor_value_info("c1.y", onnx.TensorProto.FLOAT, None))
    return hidden


def test_a_layer_fed_by_two_groups_is_compensated_for_both():
    """Concat(a, b) -> 1x1 Conv: channels chosen in both groups are compensated together."""
    b = Builder(seed=4)
    x = b.input((64, 3, 5, 5))
    a = b.op("Relu", [b.conv(x, 4, k=3, name="ca")], name="ra")
    c = b.op("Relu", [b.conv(x, 3, k=3, name="cb")], name="rb")
    cat = b.op("Concat", [a, c], name="cat", axis=1)
    b.output(b.conv(cat, 5, k=1, name="cc"))
    model = b.build()
    data = np.random.default_rng(5).standard_normal((64, 3, 5, 5)).astype(np.float32)
    analysis = spa.analyze(model)
    chosen = {group_of(analysis, "ca.W", 0).id: np.array([1]), group_of(analysis, "cb.W", 0).id: np.array([0, 2])}
    with obspa.Obspa(analysis, calib={"X": data}, damp=TINY_DAMP) as o:
        pruned, _ = apply(analysis, chosen, new_values=o.compensation(chosen))

    y = outputs(model, data)
    hidden = onnx.ModelProto()
    hidden.CopyFrom(model)
    del hidden.graph.output[:]
    hidden.graph.output.append(onnx.helper.make_tensor_value_info(cat, onnx.TensorProto.FLOAT, None))
    features = run(hidden, {"X": data})[0].astype(np.float64)
    kept = [0, 2, 3, 5]  # a: 0, 2, 3 stay; b (channels 4-6): only 5 stays
    rows = features[:, kept].transpose(0, 2, 3, 1).reshape(-1, len(kept))
    best = least_squares(rows, y.transpose(0, 2, 3, 1).reshape(-1, 5), intercept=True)
    got = outputs(pruned, data).transpose(0, 2, 3, 1).reshape(-1, 5)
    assert np.linalg.norm(got - best) < 1e-4 * np.linalg.norm(y)


# ---------------------------------------------------------------------------- scores
def test_scores_are_the_relative_error_of_the_greedy_removals():
    """The cheapest unit goes first, and its score is the error its optimal removal leaves,
    relative to the layer's output energy."""
    model = linear_model("matmul+add", rng_seed=6)
    x = np.random.default_rng(7).standard_normal((200, 10)).astype(np.float32)
    analysis = spa.analyze(model)
    group = group_of(analysis, "l1.W", 1)
    with obspa.Obspa(analysis, calib={"X": x}, damp=TINY_DAMP) as o:
        scores = o.scores([group])[group.id]

    weights = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    hidden = relu(x @ weights["l1.W"] + weights["l1.B"])
    y = hidden @ weights["l2.W"] + weights["l2.B"]
    errors = [np.sum((y - least_squares(np.delete(hidden, u, axis=1), y, intercept=True)) ** 2) / np.sum(y ** 2)
              for u in range(12)]
    assert np.argmin(scores) == np.argmin(errors)
    assert scores.min() == pytest.approx(min(errors), rel=1e-3)
    assert len(np.unique(scores)) == 12  # a strict order: the greedy removal order


# ---------------------------------------------------------------------------- data and memory
def test_streaming_in_chunks_bounds_memory_and_changes_nothing(exports):
    path = exports.get("resnet_basic", "dynamo")
    analysis = spa.analyze(path)
    with obspa.Obspa(analysis, data_free="gaussian", samples=8) as whole:
        expected = whole.scores()
        assert whole.passes == 1
    largest = max(layer.size(analysis.graph) ** 2 * 8 for layer in whole.layers)
    with obspa.Obspa(analysis, data_free="gaussian", samples=8, memory=largest) as chunked:
        got = chunked.scores()
        assert chunked.passes > 2
        assert chunked.store.on_disk
        assert chunked.store.peak <= largest
    for g in expected:
        np.testing.assert_allclose(got[g], expected[g], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("batch_statistics", [False, True])
def test_onnxruntime_streams_what_the_torch_copy_computes(exports, batch_statistics):
    """The activations OBSPA reads come from onnxruntime; torch's copy of the model agrees."""
    graph = spa.Graph.load(exports.get("resnet_basic", "dynamo", training=True))
    tensors = [n.input[0] for n in graph.nodes if n.op_type == "Conv"][1:4] + [graph.nodes[-1].output[0]]
    batches = [random_inputs(graph.model, batch=4, seed=s) for s in range(2)]
    seen = {}
    for network in (RuntimeNetwork(graph), Network(graph, "cpu")):
        got = []
        network.stream(tensors, batches, lambda name, value: got.append((name, value)), batch_statistics)
        seen[type(network).__name__] = sorted(got, key=lambda item: item[0])
    assert [n for n, _ in seen["RuntimeNetwork"]] == [n for n, _ in seen["Network"]]
    for (_, a), (_, b) in zip(seen["RuntimeNetwork"], seen["Network"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_sequential_compensation_solves_on_the_pruned_models_inputs(exports):
    """A layer after a pruned one is solved on the inputs the pruned model gives it: it differs
    from the one-shot solution, and the pruned model is no further from the dense one."""
    path = exports.get("resnet_basic", "dynamo")
    x = random_inputs(onnx.load(path), batch=32, seed=1)
    dense = run(path, x)[0]
    errors, values = {}, {}
    for sequential in (False, True):
        model, _ = spa.prune(path, target_flops=0.6, criterion="obspa", round_to=1,
                             obspa={"data_free": "gaussian", "samples": 64, "sequential": sequential})
        values[sequential] = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        errors[sequential] = float(np.abs(run(model, x)[0] - dense).mean())
    assert any(not np.array_equal(values[True][n], values[False][n]) for n in values[True])
    assert errors[True] <= errors[False] * 1.2


def test_inversion_makes_inputs_the_model_classifies_as_asked(exports):
    graph = spa.Graph.load(exports.get("conv_chain", "dynamo"))
    network = Network(graph)
    start = synthetic.gaussian_inputs(graph, 16)
    inverted = synthetic.invert(network, start, steps=30, batch_size=16)
    logits = run(graph.model, inverted.inputs)[0]
    classes = synthetic.classes(network.graph)
    assert np.mean(logits.argmax(1) == np.arange(16) % classes) >= 0.9
    noise = run(graph.model, start.inputs)[0]
    assert np.mean(noise.argmax(1) == np.arange(16) % classes) < 0.5


# The zoo's BatchNorm statistics are random, so they describe no input distribution: with BN kept,
# the test runs inversion alone (the BN route: running means take the bias shifts, gamma scales rows).
@pytest.mark.parametrize("training, data_free", [(False, "auto"), (True, "inversion")], ids=["bn-folded", "bn-kept"])
def test_data_free_obspa_stays_closer_to_the_model_than_l1(exports, training, data_free):
    path = exports.get("resnet_basic", "dynamo", training=training)
    original = onnx.load(path)
    feeds = random_inputs(original, batch=16, seed=1)
    want = run(original, feeds)[0]
    l1, _ = spa.prune(path, ratio=0.3, criterion="l1")
    pruned, report = spa.prune(path, ratio=0.3, criterion="obspa", obspa=dict(data_free=data_free, samples=32, inversion_steps=20))
    got = run(pruned, feeds)[0]
    assert got.shape == want.shape
    assert report.flops_after < 0.8 * report.flops_before

    def relative(y):
        return np.linalg.norm(y - want) / np.linalg.norm(want)
    assert relative(got) < 0.7 * relative(run(l1, feeds)[0])


def test_calibrated_mode_reads_an_npz(tmp_path, exports):
    path = exports.get("conv_chain", "dynamo")
    model = onnx.load(path)
    name = model.graph.input[0].name
    np.savez(tmp_path / "calib.npz", **{name: random_inputs(model, batch=8)[name]})
    pruned, report = spa.prune(path, ratio=0.25, calib=str(tmp_path / "calib.npz"), criterion="obspa")
    assert report.params_after < report.params_before
    assert run(pruned, random_inputs(model, batch=2))[0].shape == run(model, random_inputs(model, batch=2))[0].shape


def test_bad_requests_are_one_line_errors(exports):
    path = exports.get("conv_chain", "dynamo")
    with pytest.raises(SpaError, match="unknown data-free"):
        spa.prune(path, ratio=0.2, criterion="obspa", obspa=dict(data_free="magic"))
    with pytest.raises(SpaError, match="needs BatchNormalization"):
        spa.prune(path, ratio=0.2, criterion="obspa", obspa=dict(data_free="batchnorm", samples=4))
    b = Builder()
    tokens = b.input((2, 4), dtype=onnx.TensorProto.INT64)
    table = b.op("Gather", [b.weight("E", (10, 6)), tokens], name="embed")
    b.output(b.linear(b.linear(table, 8, name="l1"), 3, name="l2"))
    with pytest.raises(SpaError, match="floating-point inputs only"):
        spa.prune(b.build(), ratio=0.5, criterion="obspa")


def test_auto_inverts_a_classifier_within_budget_and_falls_back_beyond(exports, monkeypatch):
    def used(path, **options):
        with obspa.Obspa(spa.analyze(path), samples=4, inversion_steps=1, **options) as o:
            o.scores()
            return o.inputs_used
    folded, kept = exports.get("conv_chain", "dynamo"), exports.get("conv_chain", "dynamo", training=True)
    assert used(folded) == "inversion"
    assert used(kept) == "inversion+batchnorm"
    monkeypatch.setattr(obspa, "INVERSION_BUDGET", 0)
    assert used(folded) == obspa.GRADIENT_FREE_CLASSIFIER  # images, no BatchNorm: natural-like inputs
    assert used(kept) == "batchnorm"
    assert used(folded, calib={spa.Graph.load(folded).inputs[0]: np.zeros((4, 3, 32, 32), np.float32)}) == "calibration"


def test_groups_no_layer_multiplies_are_scored_by_channel_energy(exports):
    """UNet: the bottleneck's channels go into a ConvTranspose, which is not a layer OBSPA solves."""
    path = exports.get("unet", "dynamo")
    analysis = spa.analyze(path)
    with obspa.Obspa(analysis, data_free="gaussian", samples=8) as o:
        scores = o.scores()
        without = [g for g in analysis.prunable if not any(g.id in layer.units for layer in o.layers)]
    assert without
    for g in without:
        assert np.all(scores[g.id] > 0) and scores[g.id].sum() == pytest.approx(1.0)
    pruned, _ = spa.prune(path, ratio=0.3, criterion="obspa", obspa=dict(data_free="gaussian", samples=8))
    feeds = random_inputs(onnx.load(path), batch=2)
    assert run(pruned, feeds)[0].shape == run(onnx.load(path), feeds)[0].shape
