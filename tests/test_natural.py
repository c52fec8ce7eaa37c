"""Natural-image-like data-free inputs (spa.natural) and what OBSPA's `auto` makes for each kind of model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import spa
from spa import natural, obspa
from spa.graph import Graph
from tests.rules.graphs import Builder


def conv_net(shape=("N", 3, 32, 32), head: str = "classes", batchnorm: bool = False, normalize=None) -> onnx.ModelProto:
    """Conv-Relu-Conv and a head: `classes` (pooled logits) or `map` (a dense output map, as a
    segmenter or a detector has); optionally a BatchNorm, and a (x - mean) / std front."""
    b = Builder(seed=1)
    x = b.input(shape)
    channels = shape[1]
    if normalize is not None:
        mean, std = normalize
        per_channel = (1, channels) + (1,) * (len(shape) - 2)
        x = b.op("Div", [b.op("Sub", [x, b.const("mean", np.reshape(mean, per_channel))]),
                         b.const("std", np.reshape(std, per_channel))])
    h = b.conv(x, 8, k=3, name="c1")
    if batchnorm:
        h = b.op("BatchNormalization", [h, b.weight("bn.g", (8,)), b.weight("bn.b", (8,)), b.weight("bn.m", (8,)),
                                        b.weight("bn.v", (8,), offset=3.0)])
    h = b.conv(b.op("Relu", [h]), 8, k=3, name="c2")
    if head == "classes":
        pooled = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [h])])])
        b.output(b.op("Gemm", [pooled, b.weight("fc.W", (5, 8)), b.weight("fc.B", (5,))], transB=1))
    else:
        b.output(b.conv(b.op("Relu", [h]), 2, k=1, name="head"))
    return b.build()


def mlp() -> onnx.ModelProto:
    b = Builder(seed=2)
    b.output(b.linear(b.op("Relu", [b.linear(b.input((1, 12)), 16, name="l1", bias=True)]), 4, name="l2"))
    return b.build()


@pytest.mark.parametrize("kind", natural.GENERATORS)
@pytest.mark.parametrize("shape", [("N", 3, 24, 20), ("N", 1, 8, 8), ("N", 4, 40)], ids=["rgb", "gray", "1-d"])
def test_generators_make_standardized_finite_inputs_of_the_models_shape(kind, shape):
    graph = Graph(conv_net(shape, head="map"))
    inputs = natural.natural_inputs(graph, kind, 12, seed=3).inputs["X"]
    assert inputs.shape == (12, *shape[1:]) and inputs.dtype == np.float32
    assert np.all(np.isfinite(inputs))
    axes = tuple(a for a in range(inputs.ndim) if a != 1)
    np.testing.assert_allclose(inputs.mean(axes), 0, atol=1e-5)
    np.testing.assert_allclose(inputs.std(axes), 1, rtol=1e-4)
    again = natural.natural_inputs(graph, kind, 12, seed=3).inputs["X"]
    assert np.array_equal(inputs, again) and not np.array_equal(inputs, natural.natural_inputs(graph, kind, 12, 4).inputs["X"])


def band_power(images: np.ndarray) -> np.ndarray:
    """Mean power of the images' spectra in four frequency bands, lowest first (the constant term left out)."""
    spectrum = np.abs(np.fft.rfft2(images)) ** 2
    f = natural._frequencies(images.shape[-2:])
    edges = np.linspace(0, f.max() + 1e-9, 5)
    bands = [(f > lo) & (f <= hi) for lo, hi in zip(edges, edges[1:])]
    return np.array([spectrum[..., band].mean() for band in bands])


def test_pink_noise_power_falls_with_frequency_as_natural_images_do():
    rng = np.random.default_rng(0)
    power = band_power(natural.pink(rng, (16, 1, 64, 64)))
    assert np.all(np.diff(power) < 0), power
    assert power[0] / power[-1] > 20  # about f^-2 to f^-3: white noise would be flat
    white = band_power(rng.standard_normal((16, 1, 64, 64)))
    assert white[0] / white[-1] < 1.5


def test_smooth_fields_and_shapes_are_smooth_between_edges():
    """Neighbouring pixels correlate strongly (white noise: not at all), and shapes have flat regions."""
    rng = np.random.default_rng(1)

    def neighbour_correlation(x):
        return np.corrcoef(x[..., :, 1:].ravel(), x[..., :, :-1].ravel())[0, 1]
    assert neighbour_correlation(natural.smooth(rng, (8, 3, 32, 32))) > 0.8
    shapes = natural.random_shapes(rng, (8, 3, 32, 32))
    assert neighbour_correlation(shapes) > 0.8
    steps = np.abs(np.diff(shapes, axis=-1))
    assert np.mean(steps < 0.05 * shapes.std()) > 0.3 and steps.max() > shapes.std()  # flat regions and edges
    assert abs(neighbour_correlation(rng.standard_normal((8, 3, 32, 32)))) < 0.05


def test_inputs_are_standardized_after_the_models_own_normalization():
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    graph = Graph(conv_net(normalize=(mean, std)))
    x = natural.natural_inputs(graph, "pink", 16).inputs["X"].astype(np.float64)
    normalized = (x - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(normalized.mean((0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(normalized.std((0, 2, 3)), 1, rtol=1e-3)
    np.testing.assert_allclose(x.mean((0, 2, 3)), mean, atol=1e-4)


def used(model, **options) -> tuple[str, list[str]]:
    with obspa.Obspa(spa.analyze(model), samples=4, inversion_steps=1, **options) as o:
        o.scores()
        return o.inputs_used, o.notes


def test_auto_picks_what_the_docs_say(monkeypatch):
    """Inversion for a classifier it can invert; else BatchNorm statistics where there are BN
    layers, the gradient-free generators (one for classifiers, one for the rest) on images and
    sequences, Gaussian noise on vectors."""
    assert used(conv_net(head="classes"))[0] == "inversion"
    assert used(conv_net(head="classes", batchnorm=True))[0] == "inversion+batchnorm"
    assert used(conv_net(head="map"))[0] == obspa.GRADIENT_FREE
    assert used(conv_net(("N", 4, 40), head="map"))[0] == obspa.GRADIENT_FREE
    assert used(conv_net(head="map", batchnorm=True))[0] == "batchnorm"
    assert used(mlp())[0] == "inversion"
    monkeypatch.setattr(obspa, "INVERSION_BUDGET", 0)
    assert used(conv_net(head="classes"))[0] == obspa.GRADIENT_FREE_CLASSIFIER
    assert used(mlp())[0] == "gaussian"


def test_auto_without_torch_makes_gradient_free_inputs_and_says_so(monkeypatch):
    def no_torch(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    monkeypatch.setattr(obspa, "Network", no_torch)
    method, notes = used(conv_net(head="classes"))
    assert method == obspa.GRADIENT_FREE_CLASSIFIER
    assert notes == [f"OBSPA: data-free inversion needs gradients and PyTorch is not installed; "
                     f"used {obspa.GRADIENT_FREE_CLASSIFIER} inputs"]
    with pytest.raises(ModuleNotFoundError):
        used(conv_net(head="classes"), data_free="inversion")


@pytest.mark.parametrize("data_free", [*natural.GENERATORS, "pink+batchnorm"])
def test_each_generator_prunes_a_map_model_closer_than_l1(data_free):
    """A dense-output model (no classes): the compensated prune stays closer to the original on
    natural-like inputs than L1's prune of the same size."""
    model = conv_net(head="map", batchnorm="batchnorm" in data_free)
    feeds = {"X": natural.natural_inputs(Graph(model), "shapes", 16, seed=9).inputs["X"]}
    want = spa.runtime.run(model, feeds)[0]

    def error(pruned):
        return np.linalg.norm(spa.runtime.run(pruned, feeds)[0] - want) / np.linalg.norm(want)
    l1, _ = spa.prune(model, ratio=0.4, criterion="l1", round_to=1)
    pruned, _ = spa.prune(model, ratio=0.4, criterion="obspa", round_to=1, obspa={"data_free": data_free, "samples": 32})
    assert error(pruned) < 0.7 * error(l1)
