"""The quality metric's network and maths: a small classifier of ``data.CLASS_NAMES`` and the
Fréchet distance between Gaussians fitted to its penultimate features.

* ``Classifier``: 32x32 RGB in [-1, 1] -> logits over the classes; ``features(x)`` is the
  ``FEATURES``-wide penultimate layer (after global average pooling and one linear layer + SiLU).
  Plain torch (no ComfyUI): four 3x3 conv stages 32-64-128-128, GroupNorm(8) + SiLU, stride-2
  downsampling to 4x4. Deterministic on the CPU.
* ``gaussian_stats(features)``: mean and covariance (float64, unbiased).
* ``frechet_distance(mu1, cov1, mu2, cov2)``:
  ``|mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2)`` in float64, with both matrix
  square roots from symmetric eigen-decompositions (negative eigenvalues of round-off clamped to
  0), so it is exact for PSD inputs and never complex. Equal to the usual
  ``tr((C1 C2)^1/2)`` form because ``C1 C2`` is similar to ``C1^1/2 C2 C1^1/2``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import NUM_CLASSES

FEATURES = 128


class Classifier(nn.Module):
    def __init__(self, classes: int = NUM_CLASSES, width: int = 32, features: int = FEATURES):
        super().__init__()
        w = width

        def stage(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(stage(3, w, 1), stage(w, 2 * w, 2), stage(2 * w, 4 * w, 2), stage(4 * w, 4 * w, 2))
        self.proj = nn.Linear(4 * w, features)
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Classifier: images must be (N, 3, H, W) in [-1, 1]; got shape {tuple(x.shape)}")
        h = self.body(x).mean(dim=(2, 3))
        return F.silu(self.proj(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of ``features`` (N, D), float64, covariance with N - 1 in the denominator."""
    f = np.asarray(features.detach().cpu().double().numpy() if torch.is_tensor(features) else features,
                   dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats: need (N >= 2, D) features; got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    a = (a + a.T) / 2
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.asarray(mu1, np.float64).reshape(-1), np.asarray(mu2, np.float64).reshape(-1)
    c1, c2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mu1.shape[0]
    if mu2.shape[0] != d or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes do not match: mu {mu1.shape}/{mu2.shape}, "
                         f"cov {c1.shape}/{c2.shape}")
    s1 = _sqrt_psd(c1)
    m = s1 @ c2 @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(w, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt)


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class indices, penultimate features) of images (N, 3, H, W) in [-1, 1]."""
    preds, feats = [], []
    for i in range(0, images.shape[0], batch):
        f = model.features(images[i:i + batch].float())
        feats.append(f)
        preds.append(model.head(f).argmax(-1))
    return torch.cat(preds), torch.cat(feats)
