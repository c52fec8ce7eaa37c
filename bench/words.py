"""Rendered words: a text-recognition data set drawn here with Pillow from the DejaVu fonts.

Words are random lowercase strings of 3 to 8 letters from a seeded vocabulary; each image is one
word in one of several DejaVu faces (Sans, Serif, Mono; bold, oblique), at several sizes, with a
small rotation and offset, Gaussian blur and noise: grayscale, [1, 32, 128] float32 in [0, 1],
dark ink on a light background. Everything is a function of the seed, so a benchmark's test set
is the same on every run and every machine with the same fonts.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from spa.errors import SpaError

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
"""Class 0 is the CTC blank; class i + 1 is ALPHABET[i]."""
HEIGHT, WIDTH = 32, 128
MIN_LENGTH, MAX_LENGTH = 3, 8
FACES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono-Bold.ttf")
SIZES = (16, 18, 20, 22, 24)
_FONT_DIR = "/usr/share/fonts/truetype/dejavu"


@dataclass
class Words:
    images: np.ndarray  # (N, 1, HEIGHT, WIDTH) float32 in [0, 1]
    texts: list[str]


def vocabulary(size: int, seed: int = 0) -> list[str]:
    """`size` distinct random lowercase words of MIN_LENGTH to MAX_LENGTH letters."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        length = int(rng.integers(MIN_LENGTH, MAX_LENGTH + 1))
        words["".join(rng.choice(list(ALPHABET), length))] = None
    return list(words)


@lru_cache(maxsize=None)
def font_file(face: str) -> str:
    """The installed file of a DejaVu face (the usual folder, else what fc-match finds)."""
    candidates = [os.path.join(_FONT_DIR, face)]
    try:
        found = subprocess.run(["fc-match", "-f", "%{file}", face[:-4]], capture_output=True, text=True, timeout=10)
        if os.path.basename(found.stdout.strip()) == face:
            candidates.append(found.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise SpaError(f"font {face} not found (install the DejaVu fonts: fonts-dejavu-core / fonts-dejavu-extra)")


@lru_cache(maxsize=None)
def _font(face: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(font_file(face), size)


def render(text: str, rng: np.random.Generator) -> np.ndarray:
    """One word, [HEIGHT, WIDTH] float32 in [0, 1], with the face, size, pose and noise drawn from rng."""
    from PIL import Image, ImageDraw, ImageFilter

    face = FACES[int(rng.integers(len(FACES)))]
    size = int(rng.choice(SIZES))
    # a long word in a wide face at a large size is shrunk until it fits, as a cropped word would be
    while True:
        font = _font(face, size)
        left, top, right, bottom = font.getbbox(text)
        if right - left <= WIDTH - 6 or size <= min(SIZES) - 6:
            break
        size -= 1
    background, ink = int(rng.integers(170, 256)), int(rng.integers(0, 90))
    # drawn on a larger canvas so the rotation does not cut the corners
    canvas = Image.new("L", (WIDTH * 2, HEIGHT * 2), color=background)
    x = WIDTH // 2 + int(rng.integers(0, max(1, WIDTH - (right - left) - 2))) - left
    y = HEIGHT // 2 + (HEIGHT - (bottom - top)) // 2 + int(rng.integers(-3, 4)) - top
    ImageDraw.Draw(canvas).text((x, y), text, fill=ink, font=font)
    canvas = canvas.rotate(float(rng.uniform(-3, 3)), resample=Image.BILINEAR, fillcolor=background)
    canvas = canvas.crop((WIDTH // 2, HEIGHT // 2, WIDTH // 2 + WIDTH, HEIGHT // 2 + HEIGHT))
    canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    pixels = np.asarray(canvas, dtype=np.float32) / 255.0
    pixels = pixels + rng.normal(0, rng.uniform(0.01, 0.08), pixels.shape)
    return np.clip(pixels, 0, 1).astype(np.float32)


def dataset(count: int, vocab: list[str], seed: int, progress=None) -> Words:
    """`count` renderings of words drawn from `vocab`, all drawn from `seed`; word and rendering are
    drawn one sample at a time, so a smaller count gives the first samples of a larger one.
    `progress` wraps the sample range (tqdm, say)."""
    rng = np.random.default_rng(seed)
    texts, images = [], []
    for _ in (progress or iter)(range(count)):
        texts.append(vocab[int(rng.integers(len(vocab)))])
        images.append(render(texts[-1], rng))
    return Words(np.stack(images)[:, None], texts)


def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CTC targets: the concatenated class indices (1-based) and each text's length."""
    flat = np.array([ALPHABET.index(c) + 1 for t in texts for c in t], dtype=np.int64)
    return flat, np.array([len(t) for t in texts], dtype=np.int64)


def greedy_decode(logits: np.ndarray) -> list[str]:
    """Best-path CTC decoding of [batch, steps, classes] scores: the most likely class per step,
    repeats merged, blanks (class 0) dropped."""
    best = logits.argmax(axis=-1)
    texts = []
    for row in best:
        kept = [c for i, c in enumerate(row) if c != 0 and (i == 0 or c != row[i - 1])]
        texts.append("".join(ALPHABET[c - 1] for c in kept))
    return texts


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def scores(predicted: list[str], truth: list[str]) -> tuple[float, float]:
    """Exact-word accuracy, and character accuracy: 1 - total edit distance / total true length
    (floored at 0)."""
    exact = float(np.mean([p == t for p, t in zip(predicted, truth)]))
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
    return exact, max(0.0, 1.0 - errors / sum(len(t) for t in truth))
