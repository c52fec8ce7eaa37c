"""Fine-tuning after a hard prune: how much of the lost accuracy `spa finetune` brings back.

The digits models of bench/bench_obspa.py (scikit-learn's digits, trained here and cached in
--cache, exported with BatchNorm folded) are pruned to --target-flops of their FLOPs by group L1
and by OBSPA data-free, then fine-tuned by distillation from the dense model (spa.finetune,
its defaults but the epochs) on --samples unlabeled training images for each of --epochs, each run
from the pruned model, and data-free (inputs inverted from the dense model, no data at all).
Accuracy is top-1 in onnxruntime on the held-out 540 test images; "recovered" is the share of the
accuracy the prune lost that came back; s / epoch is the training alone (no evaluation).
Then the text recognizer (see recognizer_rows), L1-pruned and fine-tuned the same way.

    python bench/bench_finetune.py                      # the table in the README
    python bench/bench_finetune.py --models resnet --epochs 1 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spa  # noqa: E402
from bench.bench_obspa import digits_task  # noqa: E402
from models_zoo import digits  # noqa: E402
from spa.runtime import run  # noqa: E402

PRUNES = {"L1": dict(criterion="l1"), "OBSPA data-free": dict(criterion="obspa")}


def recovered(dense: float, pruned: float, tuned: float) -> str:
    return f"{(tuned - pruned) / (dense - pruned):.0%}" if dense - pruned > 1e-9 else "-"


def rows_for(task, args):
    x_test, y_test = task.data.x_test, task.data.y_test
    dense = digits.accuracy(task.path, x_test, y_test)
    yield [task.name, "dense", "", "", f"{dense:.3f}", "", ""]
    unlabeled = {"input": task.data.x_train[:args.samples]}
    for label, options in PRUNES.items():
        # round_to=1: the FLOPs point compared unrounded (the digits models' layers are 16-256 channels)
        pruned, report = spa.prune(task.path, target_flops=args.target_flops, round_to=1, **options)
        flops = report.flops_after / report.flops_before
        before = digits.accuracy(pruned, x_test, y_test)
        prune = f"{label} @ {flops:.2f} FLOPs"
        yield [task.name, prune, "none", 0, f"{before:.3f}", "0%", ""]
        runs = [(f"{args.samples} unlabeled", dict(data=unlabeled), e) for e in args.epochs]
        runs += [(f"data-free ({args.samples})", dict(data_free="auto", samples=args.samples), e)
                 for e in args.data_free_epochs]
        for inputs, source, epochs in runs:
            tuned, result = spa.finetune(pruned, task.path, epochs=epochs, seed=args.seed, log=None, **source)
            after = digits.accuracy(tuned, x_test, y_test)
            yield [task.name, prune, inputs, epochs, f"{after:.3f}", recovered(dense, before, after),
                   f"{result.seconds_per_epoch:.2f}"]


def recognizer_rows(args):
    """The wild zoo's CRNN (random-initialized, BatchNorm kept, dynamic batch), on rendered words.
    With no trained recognizer here, the teacher's own readings are the labels: the share of
    held-out words the pruned model reads (greedy CTC) as the original does, and of the time steps
    whose most likely class is the original's."""
    import numpy as np

    from models_zoo import wild

    path = os.path.join(args.cache, "crnn_plain.onnx")
    if not os.path.exists(path):
        wild.crnn_plain(path)
    rng = np.random.default_rng(args.seed)
    words = ["".join(rng.choice(list(wild.CHARACTERS), rng.integers(3, 9))) for _ in range(args.samples + 128)]
    images = np.concatenate([wild.word_image(w, seed=i) for i, w in enumerate(words)])
    train, test = {"image": images[:args.samples]}, {"image": images[args.samples:]}
    reference = run(path, test)[0]

    def scores(model) -> list[str]:
        probabilities = run(model, test)[0]
        same_words = np.mean([a == b for a, b in zip(transcriptions(probabilities), transcriptions(reference))])
        same_steps = np.mean(probabilities.argmax(axis=2) == reference.argmax(axis=2))
        return [f"{same_words:.3f}", f"{same_steps:.3f}"]

    name = "CRNN (words)"
    pruned, report = spa.prune(path, target_flops=args.target_flops, round_to=1, criterion="l1",
                               input_shapes={"image": (1, 3, 32, 100)})
    prune = f"L1 @ {report.flops_after / report.flops_before:.2f} FLOPs"
    yield [name, prune, "none", 0, *scores(pruned), ""]
    for epochs in args.epochs:
        tuned, result = spa.finetune(pruned, path, train, epochs=epochs, seed=args.seed, log=None)
        yield [name, prune, f"{args.samples} unlabeled", epochs, *scores(tuned), f"{result.seconds_per_epoch:.2f}"]


def transcriptions(probabilities) -> list[str]:
    """Greedy CTC decoding of [batch, steps, classes] (class 0 the blank)."""
    from models_zoo.wild import CHARACTERS

    words = []
    for steps in probabilities.argmax(axis=2):
        kept = [c for k, c in enumerate(steps) if c != 0 and (k == 0 or c != steps[k - 1])]
        words.append("".join(CHARACTERS[c - 1] for c in kept))
    return words


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "spa-bench-obspa"),
                        help="where the trained models are kept between runs (shared with bench_obspa.py)")
    parser.add_argument("--models", nargs="+", default=["resnet", "mobilenet_v2"], choices=["resnet", "mobilenet_v2"])
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=256, help="unlabeled training images (and data-free inputs)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--data-free-epochs", type=int, nargs="*", default=[1, 3, 10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-recognizer", dest="recognizer", action="store_false", help="skip the CRNN text recognizer")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(args.cache, exist_ok=True)
    print("| model | prune | fine-tuned on | epochs | accuracy | recovered | s / epoch |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        for row in rows_for(digits_task(name, args.cache), args):
            print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    if args.recognizer:
        print("\n| model | prune | fine-tuned on | epochs | words read as the original | steps agreeing | s / epoch |")
        print("|---|---|---|---|---|---|---|")
        for row in recognizer_rows(args):
            print("| " + " | ".join(str(c) for c in row) + " |", flush=True)


if __name__ == "__main__":
    main()
