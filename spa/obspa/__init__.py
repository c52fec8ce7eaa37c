"""OBSPA: a structured Optimal Brain Surgeon on SPA's channel groups, with no fine-tuning and,
by default, no data.

The package: `layers` (which weights are layers, and their features), `hessians` (a layer's
inputs as rows of features and their moments, kept within a memory budget), `surgery` (costs,
the greedy order, the closed-form compensation); here, `Obspa`, which streams the inputs and
puts the pieces together.

Layers. A *layer* is a weight that multiplies a group's channels on its input side: a Conv with
group=1 (the weight's axis 1; 1-D and 2-D), a Gemm (axis 0, or 1 with transB; alpha honoured), a
MatMul with a constant 2-D right operand (axis 0, or axis 1 behind a Transpose). A weight read by
several such operators is one layer (their inputs are pooled). Its matrix W (outputs x features)
has one feature per input index and kernel position; a channel owns the features of its indices
on the weight's input axis (for a Conv, each index's whole kh*kw block). Where the outputs can take
a constant shift (the layer's own bias, the running mean of a BatchNormalization that reads it, or
an Add of a constant), W gets one more column, the bias, on a constant input of 1: compensation
then also moves the mean of what a removed channel carried into the bias. Rows are scaled by a
following BatchNorm's gamma / sqrt(var + eps), so that costs are those of the BN-folded model.
Depthwise and grouped convolutions are not layers: SPA removes whole groups of them together with
their input channels, and the cost of those channels is measured at the next layer (the 1x1
projection of a MobileNet block).

Hessians. For each layer, H = E[x x^T] over its unfolded inputs x, accumulated in float64 batch by
batch while the model runs in onnxruntime with the layers' inputs tapped (spa.activations); the
math is numpy and LAPACK (scipy), PyTorch is needed only for the data-free inversion. Layers are taken in topological order in chunks whose Hessians fit `memory` bytes; one
forward pass per chunk, stopped after the chunk's last layer. A finished Hessian is kept as its
damped inverse (H + lambda I)^-1, lambda = `damp` x mean(diag H), and when they do not all fit
`memory` they wait on disk. So memory is about `memory` (at least the largest Hessian), never all
the activations of the model.

Scores (higher = more important). Removing the features M of a layer costs
tr(W[:,M] ((H^-1)[M,M])^-1 W[:,M]^T), the least-squares increase of its output error, when the
kept weights compensate with dW = -W[:,M] ((H^-1)[M,M])^-1 (H^-1)[M,:]. Costs are divided by the
layer's output energy tr(W H W^T) so that layers of any scale compare, and a group's cost is the
sum over its layers. Within a group, channels are removed greedily, cheapest first, with the
compensation and the downdate of each layer's H^-1 applied before the next choice (OBC's order):
one channel per step for groups of up to `max_steps` (128) channels, and ceil(n / max_steps) per
step for larger ones. Greedy, because each choice then sees the compensation already made; blocks
for large groups, because a step costs a rank-k downdate of every layer's H^-1 (a ResNet-50's
2048-channel residual group would take 2048 of them): on the digits models, even 8 steps per group
moved accuracy by about a point at most, within the noise of the data-free seeds. A channel's
score is the running maximum of the marginal costs along the order: the lowest scores are exactly
the greedy prefix, and scores of different groups compare (relative output error), so a global
ranking or a FLOPs target needs no normalization. A group no layer multiplies (its channels only
meet activations or operators OBSPA does not solve, such as ConvTranspose) is scored by each
channel's share of the energy of the group's run-time tensors.

Compensation. For the channels chosen in every group, each layer's removed features are the union
over its groups (a Concat feeding one Conv); its new weights are the one-shot closed form above for
that whole set, which is the least-squares optimum min ||W X - W' X|| over W' with the removed
columns at zero (ridge-damped by lambda).

Data. With calibration data, its inputs are used (no labels needed). Without (data-free), inputs
are generated (spa.synthetic, spa.natural): "gaussian" (standard normal, shaped like the model's
inputs); "smooth", "pink", "shapes" (natural-image-like: low-pass filtered noise, 1/f noise, random
ellipses and strokes on a smooth background; standardized per channel after the model's own input
normalization; no gradients needed); "inversion" (Gaussian inputs optimized so the model
classifies them confidently into evenly spread classes, with a smoothness prior and, where there
are BN layers, a pull toward their running statistics; PyTorch needed); and any of those but
inversion with "+batchnorm" ("batchnorm" alone: gaussian), every BatchNorm then normalizing by its
own batch statistics, so each BN output has the statistics its running mean and variance imply for
real data. "auto" (the default) takes inversion for a classifier when it fits INVERSION_BUDGET
multiply-adds and PyTorch can run the model (inversion+batchnorm where there are BN layers); else
batchnorm where there are BN layers; else, for inputs with spatial axes (images, sequences),
GRADIENT_FREE_CLASSIFIER ("shapes") for a classifier and GRADIENT_FREE ("pink") for any other
model; else gaussian. Measured (bench/bench_obspa.py --ablation, --non-classifiers):
on the digits models inversion was best by far on BN-folded exports (MobileNetV2 at 70% FLOPs:
0.980 against 0.843 for gaussian) and inversion+batchnorm on BN-kept ones (0.919 at 50% FLOPs
against 0.861 for batchnorm and 0.365 for gaussian); where inversion cannot go, on the wild zoo's
YOLOv8-style detector at 50% FLOPs, output error relative to the outputs' variation on rendered
scenes: gaussian 0.88, smooth 0.32, pink 0.35, shapes 0.67 (group L1: 1.63); on the digits ResNet
(accuracy at 70% / 50% FLOPs, 2 seeds): gaussian 0.869 / 0.653, smooth 0.187 / 0.187, pink
0.865 / 0.651, shapes 0.988 / 0.851. Shapes for a classifier (its strokes and edges are what the
classes are made of); pink for the rest, because smooth fields, best on the detector's 64x64
scenes, collapse on small images, while 1/f noise has the same statistics at every size.
"""
from __future__ import annotations

import math
import sys

import networkx as nx
import numpy as np
from tqdm import tqdm

from .. import natural, synthetic
from ..activations import Network, RuntimeNetwork
from ..calib import load_calibration
from ..errors import SpaError
from ..extras import missing
from ..groups import Analysis, Group
from ..metrics import count_flops
from .hessians import HessianStore, Moments, row_chunks
from .layers import Layer, attr, find_layers
from .surgery import Surgeon, compensated, damped_inverse, greedy_scores

# How inputs are made without data (spa.synthetic, spa.natural). "auto": "inversion" (+"batchnorm"
# where the model has BatchNorm layers) for a classifier when it fits INVERSION_BUDGET and PyTorch
# runs it, else "batchnorm" where the model has BatchNorm layers, else GRADIENT_FREE_CLASSIFIER
# (a classifier) or GRADIENT_FREE for images and sequences, else "gaussian".
DATA_FREE = ("auto", "gaussian", "batchnorm", "inversion", "inversion+batchnorm",
             *natural.GENERATORS, *(f"{g}+batchnorm" for g in natural.GENERATORS))
DEFAULT_INVERSION_STEPS = 50
# "auto" for images and sequences without BatchNorm that it cannot invert (see the module docstring)
GRADIENT_FREE = "pink"
GRADIENT_FREE_CLASSIFIER = "shapes"  # the same for a classifier
INVERSION_BUDGET = 5e12  # multiply-adds "auto" may spend on inversion (a minute or two on 2 cores)
DEFAULT_MAX_STEPS = 128
DEFAULT_SEQUENTIAL_PASSES = 8  # bands of depth the sequential compensation solves one after another
DEFAULT_DAMP = 0.01
DEFAULT_SAMPLES = 128
DEFAULT_BATCH = 32
DEFAULT_MEMORY = 1 << 30  # bytes of Hessians held in memory at once (at least the largest one)


class Obspa:
    """Scores and compensation for one analysed model; Hessians are computed on first use.

    calib: calibration data (an .npz path, a dict of arrays or a spa.calib.Calibration), or None
    for data-free, where `data_free` says how inputs are made (DATA_FREE): `samples` of them,
    inverted for `inversion_steps`. damp: dampening as a fraction of the mean of diag H; memory:
    bytes of Hessians held at once; max_steps: removal steps per group in the greedy order (a
    group of more units removes ceil(units / max_steps) per step). device: where the torch copy of
    the model runs for the inversion (None: the GPU when there is one).
    """

    def __init__(self, analysis: Analysis, calib=None, data_free: str = "auto", samples: int = DEFAULT_SAMPLES,
                 batch_size: int = DEFAULT_BATCH, damp: float = DEFAULT_DAMP, memory: int = DEFAULT_MEMORY,
                 inversion_steps: int = DEFAULT_INVERSION_STEPS, max_steps: int = DEFAULT_MAX_STEPS, device=None,
                 seed: int = 0, progress: bool = False, input_shapes: dict | None = None, sequential: bool = False,
                 sequential_passes: int = DEFAULT_SEQUENTIAL_PASSES):
        if data_free not in DATA_FREE:
            raise SpaError(f"unknown data-free input generation '{data_free}' (choose from {', '.join(DATA_FREE)})")
        if damp < 0 or min(samples, batch_size, max_steps) < 1 or inversion_steps < 0:
            raise SpaError("OBSPA needs damp >= 0, samples, batch size and steps >= 1, inversion steps >= 0")
        self.analysis = analysis
        self.graph = analysis.graph
        self.calibration = load_calibration(calib, self.graph.model) if calib is not None else None
        self.data_free = data_free
        self.samples = samples
        self.batch_size = batch_size
        self.damp = damp
        self.memory = memory
        self.inversion_steps = inversion_steps
        self.max_steps = max_steps
        self.device = device  # where the torch copy for the inversion runs (None: the GPU when there is one)
        self.seed = seed
        self.progress = progress
        self.layers = find_layers(analysis, analysis.prunable)
        self.inputs_used: str | None = None  # "calibration" or the data-free generation used, once known
        self.store: HessianStore | None = None
        self.output_energy: dict[str, float] = {}  # per layer: tr(W H W^T), the scale of its costs
        self.shares: dict[int, np.ndarray] = {}  # groups no layer multiplies: each unit's share of the energy
        self.passes = 0  # forward passes over the inputs (one per chunk of layers)
        self.input_shapes = input_shapes  # sizes of the inputs it makes (spa.inputs.choose_shapes)
        self.sequential = sequential  # compensate layer after layer on the pruned model's inputs
        self.sequential_passes = max(1, sequential_passes)  # forward passes the sequential compensation may take
        self.notes: list[str] = []  # one line each: what it fell back to

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.store is not None:
            self.store.close()

    # -------------------------------------------------------------------------- Hessians
    def _hessians(self):
        if self.store is not None:
            return
        network = RuntimeNetwork(self.graph)
        batches, batch_statistics = self._inputs(network)
        self._batches = (batches, batch_statistics)  # kept for the sequential compensation's passes
        sizes = [layer.size(self.graph) ** 2 * 8 for layer in self.layers]
        self.store = HessianStore(self.memory, sum(sizes))
        chunks = self._chunks(sizes)
        fallback = [g for g in self.analysis.prunable if not any(g.id in layer.units for layer in self.layers)]
        for number, chunk in enumerate(tqdm(chunks, desc="OBSPA Hessians", unit="pass", disable=not self.progress,
                                            file=sys.stderr)):
            last = number == len(chunks) - 1
            self._pass(network, [self.layers[i] for i in chunk], fallback if last else [], batches, batch_statistics)
        if not chunks and fallback:
            self._pass(network, [], fallback, batches, batch_statistics)

    def _inputs(self, network: RuntimeNetwork) -> tuple[list[dict[str, np.ndarray]], bool]:
        """The batches the Hessians are built from, and whether BatchNorm layers normalize them
        with their own batch statistics (data-free "batchnorm")."""
        if self.calibration is not None:
            self.inputs_used = "calibration"
            return [inputs for inputs, _ in self.calibration.batches(self.batch_size)], False
        method = self.data_free if self.data_free != "auto" else self._automatic(network)
        if "inversion" in method:
            try:  # the inversion needs gradients: the model in torch
                torch_network = Network(self.graph, self.device)
            except (SpaError, ImportError) as e:
                if isinstance(e, ImportError) and (self.data_free != "auto" or not missing(e)):
                    raise  # asked for by name, or a broken install: the caller says which extra
                method = self._gradient_free(network)
                why = "PyTorch is not installed" if isinstance(e, ImportError) else f"the model is not in PyTorch ({e})"
                self.notes.append(f"OBSPA: data-free inversion needs gradients and {why}; used {method} inputs")
        if "batchnorm" in method and not network.batchnorms:
            raise SpaError(f"data-free input generation '{method}' needs BatchNormalization layers; the model has none")
        made = method.split("+")[0] if method != "batchnorm" else "gaussian"
        if made in natural.GENERATORS:
            data = natural.natural_inputs(self.graph, made, self.samples, self.seed, self.input_shapes)
        else:  # the inversion starts from Gaussian inputs
            data = synthetic.gaussian_inputs(self.graph, self.samples, self.seed, self.input_shapes)
        if made == "inversion":
            data = synthetic.invert(torch_network, data, steps=self.inversion_steps, batch_size=self.batch_size,
                                    progress=self.progress)
        self.inputs_used = method
        if self.progress:
            print(f"OBSPA: data-free inputs: {method} ({self.samples} samples)", file=sys.stderr)
            for note in self.notes:
                print(note, file=sys.stderr)
        return [inputs for inputs, _ in data.batches(self.batch_size)], "batchnorm" in method

    def _automatic(self, network: RuntimeNetwork) -> str:
        """Inversion for a classifier when it costs at most INVERSION_BUDGET multiply-adds (about
        3x a forward pass per step and sample), with BatchNorm batch statistics where the model
        has BN layers; else the best input generation that needs no gradients."""
        cost = 3 * count_flops(self.graph) * self.samples * self.inversion_steps
        if synthetic.classes(self.graph) and cost <= INVERSION_BUDGET:
            return "inversion+batchnorm" if network.batchnorms else "inversion"
        return self._gradient_free(network)

    def _gradient_free(self, network: RuntimeNetwork) -> str:
        """BatchNorm statistics where the model has BN layers, else GRADIENT_FREE_CLASSIFIER for a
        classifier and GRADIENT_FREE for any other model on inputs with spatial axes (images,
        sequences), else Gaussian inputs."""
        if network.batchnorms:
            return "batchnorm"
        if not any(len(self.graph.shape(name) or ()) in (3, 4) for name in network.input_names):
            return "gaussian"
        return GRADIENT_FREE_CLASSIFIER if synthetic.classes(self.graph) else GRADIENT_FREE

    def _chunks(self, sizes: list[int]) -> list[list[int]]:
        """Consecutive layers whose Hessians fit the budget together (one layer at least)."""
        chunks: list[list[int]] = []
        total = 0
        for i, size in enumerate(sizes):
            if not chunks or total + size > self.memory:
                chunks.append([])
                total = 0
            chunks[-1].append(i)
            total += size
        return chunks

    def _pass(self, network: RuntimeNetwork, layers: list[Layer], fallback: list[Group], batches, batch_statistics: bool):
        """One forward pass over all batches, accumulating the layers' Hessians and the fallback
        groups' channel energies; each finished Hessian is stored as its damped inverse."""
        hessians, sums = self._accumulate(network, layers, fallback, batches, batch_statistics)
        for layer in layers:
            hessian = hessians.pop(layer.weight)
            matrix = self._matrix(layer)
            self.output_energy[layer.weight] = max(float(((matrix @ hessian) * matrix).sum()), 1e-30)
            features = hessian.shape[0] - (layer.bias is not None)
            self.store.put(layer.weight, damped_inverse(hessian, self.damp, features))
        for group in fallback:
            shares = []
            for k, member in enumerate(group.members):
                if (group.id, k) in sums:
                    energy = sums[group.id, k]
                    per_unit = np.add.reduceat(energy[member.indices], member.offsets[:-1])
                    shares.append(per_unit / max(energy.sum(), 1e-30))
            self.shares[group.id] = np.mean(shares, axis=0) if shares else np.zeros(group.units)

    def _accumulate(self, network: RuntimeNetwork, layers: list[Layer], fallback: list[Group], batches,
                    batch_statistics: bool) -> tuple[dict[str, np.ndarray], dict]:
        """The layers' Hessians E[x x^T] (weight -> matrix) and the fallback groups' channel
        energies, from one forward pass of `network` over all batches."""
        graph = self.graph
        moments = {layer.weight: Moments(layer.size(graph) - (layer.bias is not None), layer.bias is not None)
                   for layer in layers}
        for m in moments.values():
            self.store.hold(m.nbytes)
        readers: dict[str, list[tuple[Layer, int]]] = {}
        for layer in layers:
            for node in layer.nodes:
                readers.setdefault(graph.nodes[node].input[0], []).append((layer, node))
        watched = {}  # tensor -> [(group, member position)]
        for group in fallback:
            for k, member in enumerate(group.members):
                runtime = not member.is_param and not graph.is_constant_derived(member.tensor)
                if runtime and network.computes(member.tensor):
                    watched.setdefault(member.tensor, []).append((group, k))
        sums: dict[tuple[int, int], np.ndarray] = {}

        def receive(tensor: str, value: np.ndarray):
            for layer, node in readers.get(tensor, ()):
                kernel = tuple(graph.value(layer.weight).shape[2:])
                for rows in row_chunks(graph.nodes[node], value, kernel):
                    moments[layer.weight].add(rows)
            for group, k in watched.get(tensor, ()):
                axis = group.members[k].axis % value.ndim
                other = tuple(a for a in range(value.ndim) if a != axis)
                sums[group.id, k] = sums.get((group.id, k), 0) + np.square(value, dtype=np.float64).sum(other)

        network.stream(list(readers) + list(watched), batches, receive, batch_statistics)
        self.passes += 1
        hessians = {}
        for layer in layers:
            accumulated = moments.pop(layer.weight)
            hessians[layer.weight] = accumulated.hessian()
            self.store.hold(-accumulated.nbytes)
        return hessians, sums

    # -------------------------------------------------------------------------- scores
    def scores(self, groups: list[Group] | None = None) -> dict[int, np.ndarray]:
        """Per group id, a score per unit (higher = more important; see the module docstring)."""
        self._hessians()
        groups = self.analysis.prunable if groups is None else groups
        result = {}
        for group in tqdm(groups, desc="OBSPA scores", unit="group", disable=not self.progress, file=sys.stderr):
            layers = [layer for layer in self.layers if group.id in layer.units]
            if not layers:
                result[group.id] = np.asarray(self.shares.get(group.id, np.zeros(group.units)), dtype=np.float64)
                continue
            surgeons = [Surgeon(self._matrix(layer), self._inverse(layer), self.output_energy[layer.weight],
                                 layer.units[group.id]) for layer in layers]
            result[group.id] = greedy_scores(surgeons, group.units, self.max_steps)
        return result

    def _inverse(self, layer: Layer) -> np.ndarray:
        return self.store.get(layer.weight)

    def _matrix(self, layer: Layer) -> np.ndarray:
        """The layer's matrix with the bias column, rows scaled as a following BatchNorm scales
        them, in float64."""
        return layer.augmented(self.graph) * self._row_scale(layer)[:, None]

    def _row_scale(self, layer: Layer) -> np.ndarray:
        """gamma / sqrt(var + eps) of the BatchNormalization that reads the layer's output (so that
        costs measure the error after it, as in the same model with BN folded), else ones."""
        graph = self.graph
        outputs = graph.value(layer.weight).shape[layer.out_axis]
        node = graph.nodes[layer.nodes[0]]
        readers = graph.tensors[node.output[0]].consumers
        if len(layer.nodes) == 1 and len(readers) == 1:
            reader = graph.nodes[readers[0]]
            if reader.op_type == "BatchNormalization" and reader.input[0] == node.output[0]:
                gamma, var = graph.value(reader.input[1]), graph.value(reader.input[4])
                if gamma is not None and var is not None and gamma.shape == (outputs,):
                    epsilon = attr(reader, "epsilon", 1e-5)
                    scale = np.abs(gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + epsilon)
                    return np.maximum(scale, 1e-12 * max(scale.max(), 1e-30))  # invertible
        return np.ones(outputs)

    # -------------------------------------------------------------------------- compensation
    def compensation(self, chosen: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        """New values (parameter name -> array in its original shape) of every layer that loses
        input channels, and of the biases that take their shifts, for spa.api.apply.

        One-shot (the default): every layer against the dense model's inputs, in one go.
        Sequential (sequential=True): layers are solved in bands of depth, each against the
        inputs it sees in the model already pruned and compensated before it (as OBC and
        SparseGPT do), one forward pass a band. On the digits models the two were within a point
        of each other either way (bench/bench_obspa.py --orders), so the cheaper one is the default."""
        self._hessians()
        removed = {}
        for layer in self.layers:
            features = [layer.units[g][u] for g, units in chosen.items() if g in layer.units for u in units]
            if features:
                removed[layer.weight] = np.unique(np.concatenate(features))
        layers = [layer for layer in self.layers if layer.weight in removed]
        new_values: dict[str, np.ndarray] = {}
        if not self.sequential:
            for layer in layers:
                new_values.update(self._solved(layer, self._inverse(layer), removed[layer.weight]))
            return new_values
        batches, batch_statistics = self._batches
        for part in tqdm(self._bands(layers), desc="OBSPA compensation", unit="pass", disable=not self.progress,
                         file=sys.stderr):
            if not new_values:  # nothing before these layers changed yet: the dense inputs are theirs
                for layer in part:
                    new_values.update(self._solved(layer, self._inverse(layer), removed[layer.weight]))
                continue
            pruned = RuntimeNetwork(self.graph, replaced=new_values)
            hessians, _ = self._accumulate(pruned, part, [], batches, batch_statistics)
            for layer in part:
                features = hessians[layer.weight].shape[0] - (layer.bias is not None)
                inverse = damped_inverse(hessians.pop(layer.weight), self.damp, features)
                new_values.update(self._solved(layer, inverse, removed[layer.weight]))
        return new_values

    def _bands(self, layers: list[Layer]) -> list[list[Layer]]:
        """Layers in at most `sequential_passes` bands of consecutive depth, each band's Hessians
        fitting the memory budget: a layer's depth is one more than the deepest layer that feeds
        it, so a band's layers never feed each other and one pass serves them all."""
        graph = self.graph
        depth: dict[str, int] = {}
        for layer in layers:
            before = set().union(*(nx.ancestors(graph.dag, n) for n in layer.nodes))
            depth[layer.weight] = 1 + max((depth[other.weight] for other in layers if other.weight in depth
                                           and any(n in before for n in other.nodes)), default=-1)
        levels = sorted(set(depth.values()))
        per_band = max(1, math.ceil(len(levels) / self.sequential_passes))
        bands = []
        for start in range(0, len(levels), per_band):
            band = [layer for layer in layers if depth[layer.weight] in levels[start:start + per_band]]
            sizes = [layer.size(graph) ** 2 * 8 for layer in band]
            bands += [[band[i] for i in chunk] for chunk in self._chunks(sizes)]
        return bands

    def _solved(self, layer: Layer, inverse: np.ndarray, removed: np.ndarray) -> dict[str, np.ndarray]:
        """The layer's weight (and bias) once `removed` features are gone and the rest compensate."""
        new = compensated(self._matrix(layer), inverse, removed)
        return layer.values(self.graph, new / self._row_scale(layer)[:, None])
