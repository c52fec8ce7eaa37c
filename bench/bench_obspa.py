"""OBSPA benchmark: prune trained models to 70% and 50% of their FLOPs with no fine-tuning.

Models trained here (seconds each, cached in --cache):
- `resnet`, `mobilenet_v2`: scikit-learn's digits (models_zoo.digits), exported the usual way
  (eval mode: BatchNorm folded into the convolutions);
- `mlp`: a 32-128-128-10 MLP on a generated task (scikit-learn's make_classification, 10
  classes; the digits MLP loses nothing to L1 at these points, so it separates nothing).

Methods: group L1 (the baseline), the best gradient criterion of spa.criteria with the same
calibration images and their labels, OBSPA data-free (the default, no data at all) and OBSPA
calibrated on --calib-samples training images (no labels). All go through the same FLOPs-target
search (spa.targets, global scope). Accuracy is on the held-out test split.

`--ablation` also compares the data-free input generations (spa.synthetic) on the folded and on
BatchNorm-kept exports, averaged over seeds: the numbers that chose the default.
`--data-free METHOD ...` restricts the ablation to those generations. `--non-classifiers`
compares them where inversion cannot go: a YOLOv8-style detector and a CRNN text recognizer of
the wild zoo (random weights, BatchNorm folded), by the pruned model's output error relative to
the dense model's on rendered scenes and words (models_zoo.wild), the inputs they are shaped for.
`--resnet50 [METHOD ...]` times OBSPA (data-free, `auto` by default) on torchvision's ResNet-50
exported to ONNX, to 70% FLOPs.

    python bench/bench_obspa.py                  # the table in the README
    python bench/bench_obspa.py --ablation       # + data-free input generations
    python bench/bench_obspa.py --no-table --ablation --non-classifiers --seeds 2   # the README's table
    python bench/bench_obspa.py --no-table --orders   # sequential against one-shot compensation
    python bench/bench_obspa.py --resnet50       # + the ResNet-50 timing
    python bench/bench_obspa.py --resnet50 inversion --resnet50-samples 32 --resnet50-inversion-steps 20
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spa  # noqa: E402
from models_zoo import digits  # noqa: E402
from spa import obspa  # noqa: E402

GRADIENT_CRITERIA = ("taylor", "snip", "obd", "grasp", "crop")


@dataclass
class Task:
    name: str
    path: str
    data: digits.Digits


def digits_task(name: str, cache: str, bn_kept: bool = False) -> Task:
    suffix = "_bn" if bn_kept else ""
    path = digits.trained_onnx(name, os.path.join(cache, f"digits_{name}{suffix}.onnx"), training_export=bn_kept)
    return Task(name + (" (BN kept)" if bn_kept else ""), path, digits.load(0))


def mlp_task(cache: str, seed: int = 0) -> Task:
    """A 32-128-128-10 MLP trained on make_classification (10 classes, 2 clusters each)."""
    import torch
    from sklearn.datasets import make_classification
    from torch import nn

    from frontends.torch import export

    x, y = make_classification(n_samples=4000, n_features=32, n_informative=24, n_redundant=4, n_classes=10,
                               n_clusters_per_class=2, class_sep=1.5, random_state=seed)
    x = x.astype(np.float32)
    cut = 2800
    data = digits.Digits(x[:cut], y[:cut].astype(np.int64), x[cut:], y[cut:].astype(np.int64))
    path = os.path.join(cache, "generated_mlp.onnx")
    if not os.path.exists(path):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        export(digits.train(model, data, epochs=60, seed=seed), torch.zeros(2, 32), path)
    return Task("mlp (generated)", path, data)


def calibration(task: Task, samples: int, labels: bool) -> dict[str, np.ndarray]:
    import onnx

    name = onnx.load(task.path, load_external_data=False).graph.input[0].name
    calib = {name: task.data.x_train[:samples]}
    if labels:
        calib["labels"] = task.data.y_train[:samples]
    return calib


def run_method(task: Task, method: str, flops: float, args, **options) -> dict:
    start = time.perf_counter()
    calib = options.pop("calib", None)
    seed = options.pop("seed", 0)  # prune's own: it seeds OBSPA's generated inputs
    settings = {"obspa": options} if method == "obspa" else options
    # round_to=1: the FLOPs points are compared unrounded (the digits models' layers are 16-64 channels)
    model, report = spa.prune(task.path, target_flops=flops, criterion=method, calib=calib, round_to=1, seed=seed,
                              **settings)
    seconds = time.perf_counter() - start
    return {"acc": digits.accuracy(model, task.data.x_test, task.data.y_test),
            "flops": report.flops_after / report.flops_before,
            "params": report.params_after / report.params_before, "seconds": seconds}


def best_gradient_criterion(task: Task, args) -> str:
    """The gradient criterion with the best mean accuracy over both FLOPs points."""
    calib = calibration(task, args.calib_samples, labels=True)
    means = {c: np.mean([run_method(task, c, f, args, calib=calib)["acc"] for f in args.flops])
             for c in GRADIENT_CRITERIA}
    print(f"  gradient criteria on {task.name}: " + ", ".join(f"{c} {a:.3f}" for c, a in means.items()), flush=True)
    return max(means, key=means.get)


def main_table(tasks: list[Task], args):
    print("| model | method | FLOPs kept | params kept | accuracy | wall time |")
    print("|---|---|---|---|---|---|")
    for task in tasks:
        original = digits.accuracy(task.path, task.data.x_test, task.data.y_test)
        print(f"| {task.name} | original | 1.00 | 1.00 | {original:.3f} | |", flush=True)
        best = best_gradient_criterion(task, args) if args.criteria else None
        methods = [("group L1", "l1", {})]
        if best:
            labelled = calibration(task, args.calib_samples, True)
            methods.append((f"{best} (calibrated, labels)", best, {"calib": labelled}))
        methods += [("OBSPA data-free", "obspa", {}),
                    ("OBSPA calibrated", "obspa", {"calib": calibration(task, args.calib_samples, False)})]
        for flops in args.flops:
            for label, method, options in methods:
                r = run_method(task, method, flops, args, **options)
                print(f"| {task.name} | {label} @ {flops:.0%} | {r['flops']:.2f} | {r['params']:.2f} | "
                      f"{r['acc']:.3f} | {r['seconds']:.1f} s |", flush=True)


def ablation(tasks: list[Task], args):
    """Data-free input generations, mean accuracy over seeds at each FLOPs point."""
    print("\n| model | data-free inputs | " + " | ".join(f"acc @ {f:.0%} FLOPs" for f in args.flops) + " | wall time |")
    print("|---|---|" + "---|" * len(args.flops) + "---|")
    for task in tasks:
        for method in args.data_free:
            if "batchnorm" in method and "BN kept" not in task.name:
                continue
            runs = [[run_method(task, "obspa", f, args, data_free=method, seed=s) for s in range(args.seeds)]
                    for f in args.flops]
            accs = " | ".join(f"{np.mean([r['acc'] for r in rs]):.3f} ± {np.std([r['acc'] for r in rs]):.3f}"
                              for rs in runs)
            seconds = np.mean([r["seconds"] for rs in runs for r in rs])
            print(f"| {task.name} | {method} | {accs} | {seconds:.1f} s |", flush=True)


def non_classifiers(args):
    """Output error of the pruned detector and recognizer against the dense ones on data-shaped
    inputs, relative to the dense outputs' variation between inputs (mean over seeds), per
    data-free generation, with group L1 as the baseline."""
    from models_zoo import wild

    words = ["spa2024", "prune", "hello42", "ONNX", "kernel", "data7", "Surgeon", "obc", "tensor", "x9y",
             "channel", "Hessian", "zero", "pixel", "ab1", "model"]
    models = {
        "yolov8 (detector)": ("yolov8", lambda: {"images": wild.scene_image(64, 64, seed=100, batch=16)}),
        "crnn (recognizer)": ("crnn", lambda: {"input": np.concatenate(
            [wild.word_image(w, seed=100 + i) for i, w in enumerate(words)])}),
    }
    print("\n| model | data-free inputs | " + " | ".join(f"output error @ {f:.0%} FLOPs" for f in args.flops)
          + " | wall time |")
    print("|---|---|" + "---|" * len(args.flops) + "---|")
    for label, (name, data) in models.items():
        path = os.path.join(args.cache, f"wild_{name}.onnx")
        if not os.path.exists(path):
            wild.write(name, path)
        feeds = data()
        dense = outputs(path, feeds)
        shapes = wild.WILD_ZOO[name].input_shapes
        methods = [("group L1", "l1", {})] + [(m, "obspa", {"data_free": m}) for m in args.data_free
                                               if "batchnorm" not in m and "inversion" not in m]
        for method_label, criterion, options in methods:
            errors, seconds = [[] for _ in args.flops], []
            for seed in range(args.seeds if criterion == "obspa" else 1):
                for k, flops in enumerate(args.flops):
                    start = time.perf_counter()
                    model, _ = spa.prune(path, target_flops=flops, criterion=criterion, round_to=1,
                                         input_shapes=shapes, seed=seed, obspa=options)
                    seconds.append(time.perf_counter() - start)
                    got = outputs(model, feeds)
                    # relative to how much the outputs vary between inputs (a detector's box outputs
                    # carry a large constant part, its anchor grid, that no prune changes)
                    errors[k].append(np.sqrt(sum(np.sum((g - d) ** 2) for g, d in zip(got, dense))
                                             / sum(np.sum((d - d.mean(0)) ** 2) for d in dense)))
            cells = " | ".join(f"{np.mean(e):.3f}" for e in errors)
            print(f"| {label} | {method_label} | {cells} | {np.mean(seconds):.1f} s |", flush=True)


def outputs(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs on every sample, one at a time (the wild zoo's recognizer fixes its batch at 1)."""
    samples = len(next(iter(feeds.values())))
    runs = [spa.runtime.run(model, {n: a[i:i + 1] for n, a in feeds.items()}) for i in range(samples)]
    return [np.concatenate([r[k] for r in runs]).astype(np.float64) for k in range(len(runs[0]))]


def orders(tasks: list[Task], args):
    """Sequential compensation (each layer on the pruned model's inputs) against one-shot (every
    layer on the dense model's), data-free and calibrated: the numbers that chose the default."""
    print("\n| model | inputs | compensation | " + " | ".join(f"acc @ {f:.0%} FLOPs" for f in args.flops) + " | wall time |")
    print("|---|---|---|" + "---|" * len(args.flops) + "---|")
    for task in tasks:
        for inputs, extra in (("data-free", {}), ("calibrated", {"calib": calibration(task, args.calib_samples, False)})):
            for sequential in (True, False):
                runs = [run_method(task, "obspa", f, args, sequential=sequential, **extra) for f in args.flops]
                accs = " | ".join(f"{r['acc']:.3f}" for r in runs)
                seconds = np.mean([r["seconds"] for r in runs])
                print(f"| {task.name} | {inputs} | {'sequential' if sequential else 'one-shot'} | {accs} | "
                      f"{seconds:.1f} s |", flush=True)


def time_resnet50(args):
    """OBSPA on torchvision's ResNet-50 (BN folded, as exported for inference) to 70% FLOPs, with
    each of the data-free generations asked for (progress and the inputs used go to stderr)."""
    from frontends.torch import export_zoo

    path = os.path.join(args.cache, "resnet50.onnx")
    if not os.path.exists(path):
        export_zoo("resnet50", path)
    for method in args.resnet50:
        options = {"data_free": method, "samples": args.resnet50_samples}
        if method != "auto":
            options["inversion_steps"] = args.resnet50_inversion_steps
        start = time.perf_counter()
        _, report = spa.prune(path, target_flops=0.7, criterion="obspa", progress=True, obspa=options)
        seconds = time.perf_counter() - start
        print(f"\nResNet-50 (224x224), OBSPA data-free ({method}, {args.resnet50_samples} samples) to 70% FLOPs: "
              f"{seconds:.0f} s; FLOPs {report.flops_after / report.flops_before:.2f}, "
              f"params {report.params_after / report.params_before:.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "spa-bench-obspa"),
                        help="where the trained models are kept between runs")
    parser.add_argument("--flops", type=float, nargs="+", default=[0.7, 0.5], help="fractions of FLOPs to keep")
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--no-table", dest="table", action="store_false", help="skip the main table")
    parser.add_argument("--no-criteria", dest="criteria", action="store_false",
                        help="skip the gradient criteria (they need labels)")
    parser.add_argument("--ablation", action="store_true", help="compare the data-free input generations")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per data-free generation in --ablation")
    parser.add_argument("--data-free", nargs="+", choices=obspa.DATA_FREE[1:], default=list(obspa.DATA_FREE[1:]),
                        help="the data-free generations --ablation and --non-classifiers compare (default: all)")
    parser.add_argument("--non-classifiers", action="store_true",
                        help="compare the gradient-free generations on a detector and a text recognizer")
    parser.add_argument("--orders", action="store_true", help="compare sequential and one-shot compensation")
    parser.add_argument("--resnet50", nargs="*", choices=obspa.DATA_FREE, default=None,
                        help="time OBSPA on a ResNet-50 export with these data-free generations (default: auto)")
    parser.add_argument("--resnet50-samples", type=int, default=obspa.DEFAULT_SAMPLES)
    parser.add_argument("--resnet50-inversion-steps", type=int, default=obspa.DEFAULT_INVERSION_STEPS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(args.cache, exist_ok=True)
    digits_models = [digits_task("resnet", args.cache), digits_task("mobilenet_v2", args.cache)] \
        if args.table or args.ablation or args.orders else []
    tasks = digits_models + [mlp_task(args.cache)] if args.table or args.orders else digits_models
    if args.table:
        main_table(tasks, args)
    if args.ablation:  # BatchNorm-kept exports: only for the generations that use their statistics
        bn_kept = [digits_task("resnet", args.cache, True), digits_task("mobilenet_v2", args.cache, True)] \
            if any("batchnorm" in m for m in args.data_free) else []
        ablation(digits_models + bn_kept, args)
    if args.non_classifiers:
        non_classifiers(args)
    if args.orders:
        orders(tasks, args)
    if args.resnet50 is not None:
        args.resnet50 = args.resnet50 or ["auto"]
        time_resnet50(args)


if __name__ == "__main__":
    main()
