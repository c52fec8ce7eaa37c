"""Natural-image-like inputs that need no gradients (data-free OBSPA for any model).

Real images are not white noise: their power falls with spatial frequency (about 1/f^2), they are
smooth between edges, and their channels move together. Made-up inputs with those statistics give
a layer's Hessian more of the structure real data gives it than Gaussian noise does, for a
detector, a text recognizer or a segmenter as much as for a classifier, and without the model's
gradients (which the inversion of spa.synthetic needs). Each generator returns arrays shaped like
the model's inputs; inputs with spatial axes (rank 3: channels x length, rank 4: channels x height x
width) get fields, others Gaussian noise.

- "smooth": low-pass filtered noise (a Gaussian filter of random width per sample).
- "pink": 1/f noise: random phases under an amplitude spectrum f^-a, a drawn in [0.8, 1.6] per
  sample (a = 1 is the 1/f^2 power of natural images).
- "shapes": a smooth background with random filled ellipses and strokes (lines) of random
  colours, soft-edged: the edges and flat regions of scenes, text and digits (1-D inputs: steps
  and ramps).

Channels are mixed so that they correlate as colour channels do. The values are then set to what
the first layer expects: zero mean and unit variance per channel, mapped back through the
normalization the model applies to its input first when it has one (a Sub and/or Div, Mul by
per-channel constants), so that the normalized values are standardized.
"""
from __future__ import annotations

import numpy as np

from .calib import Calibration
from .graph import Graph
from .synthetic import made_inputs

GENERATORS = ("smooth", "pink", "shapes")


def natural_inputs(graph: Graph, kind: str, samples: int, seed: int = 0, shapes: dict | None = None) -> Calibration:
    """`samples` inputs of generator `kind` (GENERATORS) for every input of the model."""
    make = {"smooth": smooth, "pink": pink, "shapes": random_shapes}[kind]

    def generate(rng, name, shape):
        if len(shape) not in (3, 4):  # no spatial axes, or more than two: noise
            return rng.standard_normal(shape)
        shift, scale = input_normalization(graph, name, shape)
        return standardized(make(rng, shape)) * scale + shift

    return made_inputs(graph, samples, generate, seed, shapes)


def _frequencies(spatial: tuple[int, ...]) -> np.ndarray:
    """|f| in cycles per sample on the grid of a real FFT over the spatial axes."""
    axes = [np.fft.fftfreq(n) for n in spatial[:-1]] + [np.fft.rfftfreq(spatial[-1])]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(sum(g ** 2 for g in grids))


def _filtered(rng: np.random.Generator, shape: tuple[int, ...], gain) -> np.ndarray:
    """White noise of `shape` (samples, channels, *spatial) with each sample's spectrum multiplied
    by gain(|f|, sample) -> array; channels then mixed like colour channels."""
    spatial = shape[2:]
    axes = tuple(range(2, len(shape)))
    f = _frequencies(spatial)
    spectrum = np.fft.rfftn(rng.standard_normal(shape), axes=axes)
    for i in range(shape[0]):
        spectrum[i] *= gain(f, rng)
    x = np.fft.irfftn(spectrum, s=spatial, axes=axes)
    x /= np.maximum(x.std(axis=tuple(range(1, len(shape))), keepdims=True), 1e-12)  # the same contrast each
    return _mix_channels(rng, x)


def _mix_channels(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Each sample's channels as a shared component plus their own (colour channels correlate)."""
    channels = x.shape[1]
    if channels == 1:
        return x
    shared = rng.uniform(0.5, 0.9, (x.shape[0], 1) + (1,) * (x.ndim - 2))
    return shared * x.mean(1, keepdims=True) * np.sqrt(channels) + (1 - shared) * x


def smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Low-pass filtered noise: a Gaussian filter whose cut-off is 2% to 20% of the sampling rate."""
    return _filtered(rng, shape, lambda f, r: np.exp(-0.5 * (f / r.uniform(0.02, 0.2)) ** 2))


def pink(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """1/f noise: amplitude |f|^-a, a drawn in [0.8, 1.6] per sample, no constant term."""
    def gain(f, r):
        g = np.zeros_like(f)
        g[f > 0] = f[f > 0] ** -r.uniform(0.8, 1.6)
        return g
    return _filtered(rng, shape, gain)


def random_shapes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth background under 2 to 6 filled ellipses and 1 to 4 strokes per sample, each of a
    random colour, with edges about a pixel soft (1-D: steps and ramps on the background)."""
    background = 0.5 * standardized(smooth(rng, shape))
    spatial = shape[2:]
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in spatial], indexing="ij")
    out = background.copy()
    for i in range(shape[0]):
        for cover in _covers(rng, grids, spatial):
            colour = rng.normal(0, 1.5, (shape[1],) + (1,) * len(spatial))
            out[i] = out[i] * (1 - cover) + colour * cover
    return out


def _covers(rng: np.random.Generator, grids: list[np.ndarray], spatial: tuple[int, ...]):
    """Soft masks in [0, 1] of one sample's shapes, background first."""
    if len(spatial) == 1:
        (t,), n = grids, spatial[0]
        for _ in range(rng.integers(2, 7)):  # steps and ramps
            start, width = rng.uniform(-0.2 * n, n), rng.uniform(0.05 * n, 0.5 * n)
            edge = rng.uniform(0.5, 0.2 * n) if rng.random() < 0.5 else 0.5
            yield np.clip(np.minimum(t - start, start + width - t) / edge + 0.5, 0, 1)
        return
    y, x = grids
    height, width = spatial
    size = max(height, width)
    for _ in range(rng.integers(2, 7)):  # ellipses, rotated
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.08, 0.4, 2) * size
        angle = rng.uniform(0, np.pi)
        u = ((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)) / rx
        v = (-(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)) / ry
        radius = np.sqrt(u ** 2 + v ** 2)
        yield np.clip((1 - radius) * min(rx, ry) + 0.5, 0, 1)
    for _ in range(rng.integers(1, 5)):  # strokes: thick segments
        (y0, x0), (y1, x1) = rng.uniform(0, 1, (2, 2)) * (height, width)
        thickness = rng.uniform(0.03, 0.12) * size + 0.5
        dy, dx = y1 - y0, x1 - x0
        along = np.clip(((y - y0) * dy + (x - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
        distance = np.hypot(y - (y0 + along * dy), x - (x0 + along * dx))
        yield np.clip(thickness / 2 - distance + 0.5, 0, 1)


def standardized(x: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance per channel (axis 1) over all samples and positions."""
    axes = tuple(a for a in range(x.ndim) if a != 1)
    return (x - x.mean(axes, keepdims=True)) / np.maximum(x.std(axes, keepdims=True), 1e-12)


def input_normalization(graph: Graph, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) with the model's own first steps computing (x - shift) / scale per channel
    (shaped to broadcast over `shape`), when the input goes straight into Sub, Add, Div or Mul by
    constants; zeros and ones otherwise."""
    rank, channels = len(shape), shape[1]
    shift, scale = np.zeros(channels), np.ones(channels)
    tensor = name
    for _ in range(2):  # a subtraction and a division, in either order
        readers = graph.tensors[tensor].consumers
        if len(readers) != 1:
            break
        node = graph.nodes[readers[0]]
        if node.op_type not in ("Sub", "Add", "Div", "Mul") or len(node.input) != 2 or node.input[0] != tensor:
            break
        constant = graph.value(node.input[1]) if graph.is_constant_derived(node.input[1]) else None
        per_channel = _per_channel(constant, channels, rank)
        if per_channel is None or (node.op_type in ("Div", "Mul") and np.any(per_channel == 0)):
            break
        if node.op_type == "Sub":
            shift = shift + per_channel * scale
        elif node.op_type == "Add":
            shift = shift - per_channel * scale
        elif node.op_type == "Div":
            scale = scale * per_channel
        else:
            scale = scale / per_channel
        tensor = node.output[0]
    per_axis = (1, channels) + (1,) * (rank - 2)
    return shift.reshape(per_axis), scale.reshape(per_axis)


def _per_channel(value, channels: int, rank: int) -> np.ndarray | None:
    """A floating constant that broadcasts over (samples, channels, ...) as one value per channel."""
    if value is None or not np.issubdtype(np.asarray(value).dtype, np.floating):
        return None
    value = np.asarray(value, dtype=np.float64)
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    if value.ndim > rank:
        return None
    padded = (1,) * (rank - value.ndim) + value.shape
    if padded[1] == channels and all(d == 1 for i, d in enumerate(padded) if i != 1):
        return value.reshape(-1)
    return None
