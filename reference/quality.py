"""Scoring images of the reference model: class accuracy and a Fréchet distance in the feature
space of the shipped classifier (no ComfyUI; what the FewStep Quality node and the benches use).

* ``labels_for(label, n)``: the true class of each of ``n`` images made with label ``label``: one
  class index for all, or, for ``ALL_CLASSES``, ``i % NUM_CLASSES`` (the reference model's
  conditioning for every class has one row per class, which ComfyUI cycles over the batch).
* ``score(classifier, stats, images, labels)``: accuracy, per-class accuracy, the predicted-class
  histogram, and the Fréchet distance of the images' features to the data's (the class's statistics
  when all images share one class, else the statistics over all classes).
* ``data_floor(classifier, stats, labels, seed)``: the same Fréchet distance for as many *data*
  images with the same labels: what a perfect model scores at this sample size. The Fréchet
  distance of N samples is biased upwards, the more the smaller N is (128-wide features), so a
  number means something only next to this floor, or next to another run with the same N.
"""
from __future__ import annotations

import math

import torch

from . import classifier as clf_mod
from . import data

ALL_CLASSES = "all classes (cycled over the batch)"
LABEL_CHOICES = tuple(data.CLASS_NAMES) + (ALL_CLASSES,)
MIN_FOR_FRECHET = 2


def labels_for(label: str, n: int) -> torch.Tensor:
    if label == ALL_CLASSES:
        return torch.arange(n) % data.NUM_CLASSES
    return torch.full((n,), data.label_index(label), dtype=torch.long)


def _stats_row(stats, labels: torch.Tensor) -> int:
    first = int(labels[0])
    return first if bool((labels == first).all()) else data.NUM_CLASSES


def frechet_to_data(feats: torch.Tensor, stats, labels: torch.Tensor) -> float:
    if len(feats) < MIN_FOR_FRECHET:
        return math.nan
    row = _stats_row(stats, labels)
    mu, cov = clf_mod.gaussian_stats(feats)
    return clf_mod.frechet_distance(mu, cov, stats[0][row].double().numpy(), stats[1][row].double().numpy())


def check_images(images: torch.Tensor, where: str) -> torch.Tensor:
    """(N, 3, 32, 32) in [-1, 1] from ComfyUI's IMAGE (N, H, W, 3) in [0, 1], or ValueError."""
    size = data.DEFAULT_SPEC.size
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[-1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{where}: images must be an IMAGE batch (N, H, W, 3); got {shape}")
    if tuple(images.shape[1:3]) != (size, size):
        raise ValueError(f"{where}: images must be {size}x{size} (what the reference VAE decodes from a "
                         f"4x8x8 latent: EmptyLatentImage 64x64); got {images.shape[2]}x{images.shape[1]}")
    x = images.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: images hold NaN or infinite values")
    return x.movedim(-1, 1).clamp(0, 1) * 2 - 1


def score(classifier, stats, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """``images`` (N, 3, 32, 32) in [-1, 1]; ``labels`` (N,) class indices."""
    pred, feats = clf_mod.predict(classifier, images)
    hits = pred == labels
    per_class = {}
    for k in sorted(set(labels.tolist())):
        m = labels == k
        per_class[data.CLASS_NAMES[k]] = float(hits[m].float().mean())
    hist = torch.bincount(pred, minlength=data.NUM_CLASSES)
    return {"n": int(len(labels)), "accuracy": float(hits.float().mean()), "per_class": per_class,
            "predicted": {data.CLASS_NAMES[k]: int(hist[k]) for k in range(data.NUM_CLASSES) if hist[k]},
            "frechet": frechet_to_data(feats, stats, labels)}


def data_floor(classifier, stats, labels: torch.Tensor, seed: int = 0) -> float:
    """The Fréchet distance of ``len(labels)`` fresh data images with these labels (see module doc)."""
    if len(labels) < MIN_FOR_FRECHET:
        return math.nan
    g = torch.Generator().manual_seed(data._mix(seed, 777))
    x = data.make_batch(labels, g)
    _, feats = clf_mod.predict(classifier, x)
    return frechet_to_data(feats, stats, labels)


def report_line(s: dict, floor: float, label: str) -> str:
    what = "every class" if label == ALL_CLASSES else label
    acc = f"class accuracy {100 * s['accuracy']:.1f}% ({round(s['accuracy'] * s['n'])}/{s['n']}, {what})"
    if math.isnan(s["frechet"]):
        fd = "Fréchet distance: needs at least 2 images"
    else:
        fd = f"Fréchet distance {s['frechet']:.3g} (data at this N: {floor:.3g}; lower is better)"
    worst = ""
    if len(s["per_class"]) > 1:
        k, v = min(s["per_class"].items(), key=lambda kv: kv[1])
        worst = f"; weakest class {k} {100 * v:.0f}%"
    return f"{acc}; {fd}{worst}"
