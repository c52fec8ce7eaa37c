"""Quality benchmark: L1, LAMP and OBSPA on real architectures trained here, with no fine-tuning.

Models (trained once, cached in --cache under a hash of their settings; reruns only prune):
- `crnn`: a CRNN text recognizer (models_zoo.crnn: conv backbone with BatchNorm, a BiLSTM, CTC)
  on words rendered from the DejaVu fonts (bench/words.py), scored on 1,000 held-out renderings
  of words it never saw in training: exact-word accuracy, and character accuracy
  (1 - edit distance / length);
- `crnn_transformer`: the same with a 2-layer transformer encoder instead of the LSTM;
- `resnet`, `mobilenet_v2`: the digits models of bench/bench_obspa.py (models_zoo.digits), top-1;
- `resnet_deep`: a residual net of 9 basic blocks (3 stages of 3) on the same digits, top-1.

Every model is exported as a user would (frontends.torch.export: dynamo, eval mode, BatchNorm
folded by the exporter) and pruned through spa.prune, the call `spa prune` makes, to each
--targets FLOPs fraction (global ranking, round_to=1 so that the points compare unrounded) with
each method: `l1`, `lamp`, `obspa` (data-free) and `obspa_calib` (OBSPA with --calib-samples
unlabeled training inputs). Accuracy is measured in onnxruntime; time is the prune's wall time.

    python bench/bench_quality.py                                   # the README table (trains first)
    python bench/bench_quality.py --models crnn --targets 0.6 --methods obspa_calib   # one cell
    python bench/bench_quality.py --train-only --train-device cuda  # train (and cache) the recognizers only
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spa  # noqa: E402
from bench import words  # noqa: E402
from models_zoo import digits  # noqa: E402
from spa.runtime import run, session  # noqa: E402

MODELS = ("crnn", "resnet", "mobilenet_v2", "resnet_deep", "crnn_transformer")
METHODS = {"l1": "L1", "lamp": "LAMP", "obspa": "OBSPA data-free", "obspa_calib": "OBSPA calibrated"}
TARGETS = (0.8, 0.6, 0.5)


@dataclass(frozen=True)
class TextSettings:
    """Everything a trained recognizer depends on; its hash names the cached files."""
    sequence: str = "lstm"
    layers: int = 1
    channels: tuple[int, ...] = (32, 64, 96, 128, 128)
    hidden: int = 96
    train_words: int = 6000
    test_words: int = 500
    train_images: int = 30000
    test_images: int = 1000
    epochs: int = 20
    lr: float = 2e-3
    batch: int = 64
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True) + json.dumps([words.FACES, words.SIZES, words.ALPHABET])
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def vocabularies(self) -> tuple[list[str], list[str]]:
        """Training words and held-out test words (disjoint)."""
        vocab = words.vocabulary(self.train_words + self.test_words, self.seed)
        return vocab[:self.train_words], vocab[self.train_words:]


TEXT_MODELS = {"crnn": TextSettings(), "crnn_transformer": TextSettings(sequence="transformer", layers=2)}


@dataclass
class Task:
    """A trained model to prune: its ONNX file, what scores it, and its calibration inputs."""
    name: str
    path: str
    score: Callable[[object], dict[str, float]]  # ONNX path or ModelProto -> metrics, first the headline
    calib: Callable[[int], np.ndarray]  # n -> n unlabeled training inputs
    metrics: tuple[str, ...] = ("accuracy",)
    train_seconds: float | None = None


def _input_name(model) -> str:
    return session(model).get_inputs()[0].name


def _outputs(model, x: np.ndarray, batch: int = 250) -> np.ndarray:
    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([run(model, {name: x[i:i + batch]}, sess)[0] for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------------------------
# The recognizers
# --------------------------------------------------------------------------------------------

_RENDERED: dict[tuple, words.Words] = {}


def training_words(settings: TextSettings) -> words.Words:
    """The training renderings (kept for the process: the recognizers share them)."""
    key = (settings.train_words, settings.test_words, settings.train_images, settings.seed)
    if key not in _RENDERED:
        _RENDERED[key] = words.dataset(settings.train_images, settings.vocabularies()[0], settings.seed + 1,
                                       progress=lambda r: tqdm(r, desc="rendering training words", file=sys.stderr))
    return _RENDERED[key]


def train_recognizer(settings: TextSettings, cache: str, device: str = "cpu") -> tuple[str, float | None]:
    """The recognizer's weights (a torch state dict in the cache), trained if not there yet;
    returns the path and the training time (None when cached)."""
    import torch

    from models_zoo.crnn import CRNN, train

    path = os.path.join(cache, f"crnn-{settings.key()}.pt")
    if os.path.exists(path):
        return path, None
    data = training_words(settings)
    targets, lengths = words.encode(data.texts)
    start = time.perf_counter()
    model = CRNN(len(words.ALPHABET) + 1, settings.channels, settings.hidden, settings.sequence, settings.layers)
    bar = tqdm(total=settings.epochs, desc=f"training crnn ({settings.sequence})", file=sys.stderr)

    def progress(epoch, loss):
        bar.update(1)
        bar.set_postfix(ctc_loss=f"{loss:.3f}")

    train(model, data.images, targets, lengths, settings.epochs, settings.lr, settings.batch, settings.seed,
          device, progress)
    bar.close()
    seconds = time.perf_counter() - start
    torch.save({"state_dict": model.state_dict(), "train_seconds": seconds, "device": device}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path, seconds


def load_recognizer(settings: TextSettings, weights: str):
    """The trained torch recognizer (eval mode) and its training record."""
    import torch

    from models_zoo.crnn import CRNN

    saved = torch.load(weights)
    model = CRNN(len(words.ALPHABET) + 1, settings.channels, settings.hidden, settings.sequence, settings.layers)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


def test_words(settings: TextSettings) -> words.Words:
    return words.dataset(settings.test_images, settings.vocabularies()[1], settings.seed + 2)


def text_task(name: str, cache: str, device: str = "cpu") -> Task:
    import torch

    from frontends.torch import export

    settings = TEXT_MODELS[name]
    weights, _ = train_recognizer(settings, cache, device)
    model, saved = load_recognizer(settings, weights)
    onnx_path = weights[:-3] + ".onnx"
    if not os.path.exists(onnx_path):
        export(model, torch.zeros(2, 1, words.HEIGHT, words.WIDTH), onnx_path)
    train_vocab = settings.vocabularies()[0]
    test = test_words(settings)

    def score(model) -> dict[str, float]:
        exact, chars = words.scores(words.greedy_decode(_outputs(model, test.images)), test.texts)
        return {"word accuracy": exact, "char accuracy": chars}

    return Task(name, onnx_path, score, lambda n: words.dataset(n, train_vocab, settings.seed + 1).images,
                ("word accuracy", "char accuracy"), saved["train_seconds"])


# --------------------------------------------------------------------------------------------
# The digits models
# --------------------------------------------------------------------------------------------

def digits_task(name: str, cache: str) -> Task:
    data = digits.load(0)
    shape = "_16-32-64x3" if name == "resnet_deep" else ""  # the cache file of models_zoo.digits' resnet_deep
    path = os.path.join(cache, f"digits_{name}{shape}.onnx")
    digits.trained_onnx(name, path)

    def score(model) -> dict[str, float]:
        return {"accuracy": float((_outputs(model, data.x_test).argmax(1) == data.y_test).mean())}

    return Task(name, path, score, lambda n: data.x_train[:n])


def task(name: str, cache: str, device: str = "cpu") -> Task:
    return text_task(name, cache, device) if name in TEXT_MODELS else digits_task(name, cache)


# --------------------------------------------------------------------------------------------
# Pruning and the table
# --------------------------------------------------------------------------------------------

@dataclass
class Cell:
    model: str
    method: str
    target: float | None  # None: the dense model
    flops: float = 1.0
    params: float = 1.0
    metrics: dict = field(default_factory=dict)
    seconds: float | None = None


def prune_cell(t: Task, method: str, target: float, calib_samples: int) -> Cell:
    calib = {_input_name(t.path): t.calib(calib_samples)} if method == "obspa_calib" else None
    criterion = "obspa" if method.startswith("obspa") else method
    start = time.perf_counter()
    model, report = spa.prune(t.path, target_flops=target, criterion=criterion, calib=calib, round_to=1)
    seconds = time.perf_counter() - start
    return Cell(t.name, method, target, report.flops_after / report.flops_before,
                report.params_after / report.params_before, t.score(model), seconds)


def table(cells: list[Cell]) -> str:
    """A markdown table; each cell's first metric is the headline that "of dense" compares."""
    lines = ["| model | method | target FLOPs | FLOPs kept | params kept | accuracy | of dense | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    dense = {c.model: c for c in cells if c.target is None}
    for c in cells:
        shown = " / ".join(f"{v:.3f}" for v in c.metrics.values())
        if c.target is None:
            names = f" ({' / '.join(c.metrics)})" if len(c.metrics) > 1 else ""
            lines.append(f"| {c.model} | dense | | 1.00 | 1.00 | {shown}{names} | | |")
            continue
        head = next(iter(c.metrics))
        base = dense[c.model].metrics[head] if c.model in dense else None
        ratio = f"{c.metrics[head] / base:.1%}" if base else ""
        lines.append(f"| {c.model} | {METHODS[c.method]} | {c.target:.1f} | {c.flops:.2f} | {c.params:.2f} | "
                     f"{shown} | {ratio} | {c.seconds:.1f} s |")
    return "\n".join(lines)


def goals(cells: list[Cell]) -> list[str]:
    """The issue's goals, checked on the cells that were run (a goal whose cells were not run is not shown)."""
    found = {(c.model, c.method, c.target): next(iter(c.metrics.values())) for c in cells}
    out = []

    def keeps(model, method, target, share):
        dense = found.get((model, "dense", None))
        value = found.get((model, method, target))
        if dense is None or value is None:
            return None
        return value / dense >= share, value / dense

    for model, method, target in (("crnn", "obspa", 0.8), ("crnn", "obspa_calib", 0.6)):
        result = keeps(model, method, target, 0.9)
        if result:
            out.append(f"{model}, {METHODS[method]} at {target}: keeps {result[1]:.1%} of dense word accuracy "
                       f"(goal 90%): {'met' if result[0] else 'NOT met'}")
    for model in ("resnet", "mobilenet_v2", "resnet_deep"):
        result = keeps(model, "obspa", 0.5, 0.95)
        if result:
            out.append(f"{model}, OBSPA data-free at 0.5: keeps {result[1]:.1%} of dense accuracy "
                       f"(goal 95%): {'met' if result[0] else 'NOT met'}")
        worse = [t for (m, meth, t), v in found.items()
                 if m == model and meth == "obspa" and (m, "l1", t) in found and v < found[(m, "l1", t)]]
        if any((model, "l1", t) in found for t in TARGETS):
            out.append(f"{model}, OBSPA data-free never below L1: "
                       + ("met" if not worse else f"NOT met (below at {', '.join(map(str, sorted(worse)))})"))
    return out


def write_json(path: str, cells: list[Cell]) -> None:
    with open(path, "w") as f:
        json.dump([asdict(c) for c in cells], f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "spa-bench-quality"),
                        help="where the trained models (and their exports) are kept between runs")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--targets", nargs="+", type=float, default=list(TARGETS), help="FLOPs fractions to keep")
    parser.add_argument("--calib-samples", type=int, default=32, help="unlabeled training inputs for obspa_calib")
    parser.add_argument("--train-device", default="cpu", help="torch device the recognizers train on")
    parser.add_argument("--train-only", action="store_true", help="train (and cache) the recognizers, prune nothing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="write the cells to this JSON file")
    parser.add_argument("--table-from", metavar="JSON", help="print the table and the goals of a saved --json run")
    args = parser.parse_args()
    if not all(0 < t <= 1 for t in args.targets):
        parser.error(f"--targets are fractions of the FLOPs to keep, in (0, 1]; got {args.targets}")
    if args.table_from:
        try:
            with open(args.table_from) as f:
                cells = [Cell(**c) for c in json.load(f)]
        except (OSError, ValueError, TypeError) as error:
            parser.error(f"--table-from {args.table_from}: not a saved run ({error})")
        print(table(cells) + "\n\n" + "\n".join(goals(cells)))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(args.cache, exist_ok=True)
    if args.train_only:
        for name in args.models:
            if name in TEXT_MODELS:
                import torch

                path, seconds = train_recognizer(TEXT_MODELS[name], args.cache, args.train_device)
                model, _ = load_recognizer(TEXT_MODELS[name], path)
                test = test_words(TEXT_MODELS[name])
                with torch.no_grad():
                    logits = model(torch.from_numpy(test.images)).numpy()
                exact, chars = words.scores(words.greedy_decode(logits), test.texts)
                print(f"{name}: {path}" + (f" (trained in {seconds:.0f} s)" if seconds else " (cached)")
                      + f"; held-out word accuracy {exact:.3f}, character accuracy {chars:.3f} (torch)", flush=True)
        return
    tasks, cells = {}, []
    with tqdm(total=len(args.models) * (1 + len(args.targets) * len(args.methods)), desc="pruning",
              file=sys.stderr) as bar:
        for name in args.models:
            bar.set_postfix_str(f"{name} (training or loading)")
            t = tasks[name] = task(name, args.cache, args.train_device)
            cells.append(Cell(name, "dense", None, metrics=t.score(t.path)))
            bar.update(1)
            for target in args.targets:
                for method in args.methods:
                    bar.set_postfix_str(f"{name} {method} {target}")
                    cells.append(prune_cell(t, method, target, args.calib_samples))
                    bar.update(1)
                    if args.json:  # after every cell, so that an interrupted run keeps what it measured
                        write_json(args.json, cells)
    print(table(cells))
    for name, t in tasks.items():
        if t.train_seconds:
            print(f"\n{name}: trained in {t.train_seconds:.0f} s")
    print("\n" + "\n".join(goals(cells)))
    if args.json:
        write_json(args.json, cells)


if __name__ == "__main__":
    try:
        main()
    except spa.SpaError as error:  # bad input: one line, not a traceback
        sys.exit(f"bench_quality: {error}")
