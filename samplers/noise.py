"""Seeded noise samplers for the stochastic solvers: ``noise_sampler(sigma, sigma_next) -> tensor``
of x's shape, dtype and device, standard normal per element.

* :class:`GaussianNoiseSampler` — fresh N(0, 1) noise per call from a seeded CPU generator (the same
  seed gives the same sequence on every device and dtype).
* :class:`BrownianNoiseSampler` — the normalised increment ``(W(t1) - W(t0)) / sqrt|t1 - t0|`` of one
  Brownian path W over [sigma_min, sigma_max] (t = sigma). The path is a Brownian bridge tree: the value
  at every dyadic node is drawn from a generator seeded by (seed, depth, index), so W(t) is a fixed
  function of t and the increments do not depend on the order or number of queries. Refining a schedule
  therefore refines the *same* path, which is what lets SDE solvers converge as steps are added.

A caller-supplied ``noise_sampler`` (for example ComfyUI's BrownianTreeNoiseSampler) is always used
as-is by the solvers (:func:`make_noise_sampler`).
"""
from __future__ import annotations

import math
import struct

import torch

from ._common import check_choice, resolve_seed

NOISE_TYPES = ("brownian", "gaussian")
_MASK64 = (1 << 64) - 1


def _mix(*vals: int) -> int:
    """splitmix64 over a few integers -> a 63-bit generator seed."""
    h = 0x9E3779B97F4A7C15
    for v in vals:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


def _randn(shape, seed: int) -> torch.Tensor:
    """float32 draws (5x faster on CPU), accumulated in float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(torch.float64)


class GaussianNoiseSampler:
    """Independent standard-normal noise per call, seeded; drawn on the CPU in float32 (the same stream for
    every dtype and device)."""

    def __init__(self, x: torch.Tensor, seed: int = 0):
        self.shape, self.dtype, self.device = tuple(x.shape), x.dtype, x.device
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        z = torch.randn(self.shape, generator=self.generator, dtype=torch.float32)
        # non_blocking on CUDA: a blocking copy to the GPU waits for the device to finish the queued work
        return z.to(device=self.device, dtype=self.dtype, non_blocking=self.device.type == "cuda")


class BrownianPath:
    """A Brownian motion W on [t0, t1] with W(t0) = 0, defined by a seed through a bridge tree of the
    given depth. Inside a leaf, W(t) is an exact bridge sample seeded by t itself, so every single
    increment has exactly the right variance; only two query points closer than a leaf,
    (t1 - t0) / 2^depth, miss their mutual correlation."""

    def __init__(self, shape, t0: float, t1: float, seed: int = 0, depth: int = 18):
        t0, t1 = float(t0), float(t1)
        if not (t1 > t0):
            raise ValueError(f"BrownianPath needs t1 > t0, got [{t0}, {t1}]")
        self.shape, self.t0, self.t1, self.seed, self.depth = tuple(shape), t0, t1, int(seed), int(depth)
        self.w1 = math.sqrt(t1 - t0) * _randn(self.shape, _mix(self.seed, 0, 0, 1))
        self._path = []          # cached descent of the last query: [(a, b, Wa, Wb, depth, index)]
        self._values = {}        # small cache of W(t) (the shared endpoint of consecutive steps)

    def _node(self, a, b, wa, wb, depth, index):
        """W at the midpoint of [a, b] given W(a), W(b) (deterministic in seed, depth, index)."""
        z = _randn(self.shape, _mix(self.seed, depth, index, 2))
        return 0.5 * (wa + wb) + math.sqrt((b - a) / 4.0) * z

    def __call__(self, t: float) -> torch.Tensor:
        t = min(max(float(t), self.t0), self.t1)
        hit = self._values.get(t)
        if hit is not None:
            return hit
        a, b, wa, wb, depth, index = self.t0, self.t1, torch.zeros(self.shape, dtype=torch.float64), self.w1, 0, 0
        new_path = []
        level = 0
        while depth < self.depth and t not in (a, b):
            m = 0.5 * (a + b)
            cached = self._path[level] if level < len(self._path) else None
            if cached is not None and cached[0] == (depth, index):
                wm = cached[1]
            else:
                wm = self._node(a, b, wa, wb, depth, index)
            new_path.append(((depth, index), wm))
            level += 1
            if t < m:
                b, wb, index = m, wm, 2 * index
            else:
                a, wa, index = m, wm, 2 * index + 1
            depth += 1
            if t == m:
                break
        self._path = new_path
        if t == a:
            w = wa
        elif t == b:
            w = wb
        else:
            bits = int.from_bytes(struct.pack("<d", t), "little")
            z = _randn(self.shape, _mix(self.seed, bits, 3))
            w = wa + (wb - wa) * ((t - a) / (b - a)) + math.sqrt((t - a) * (b - t) / (b - a)) * z
        if len(self._values) > 8:
            self._values.clear()
        self._values[t] = w
        return w


class BrownianNoiseSampler:
    """``noise_sampler(sigma, sigma_next)`` = normalised Brownian increment over [sigma_next, sigma]."""

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seed: int = 0, depth: int = 18):
        self.dtype, self.device = x.dtype, x.device
        self.path = BrownianPath(tuple(x.shape), float(sigma_min), float(sigma_max), seed, depth)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        s0, s1 = float(sigma), float(sigma_next)
        if s0 == s1:
            raise ValueError("BrownianNoiseSampler needs sigma != sigma_next")
        dw = self.path(s1) - self.path(s0)
        z = dw / math.sqrt(abs(s1 - s0))
        return z.to(device=self.device, dtype=self.dtype, non_blocking=self.device.type == "cuda")  # as Gaussian


def make_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, noise: str = "brownian", seed=None,
                       extra_args=None, noise_sampler=None):
    """The noise sampler a stochastic solver uses: ``noise_sampler`` as-is when given; otherwise a
    seeded one of type ``noise`` with seed = ``seed``, else ``extra_args["seed"]`` (ComfyUI), else 0."""
    if noise_sampler is not None:
        return noise_sampler
    check_choice(noise, NOISE_TYPES, "noise")
    s = resolve_seed(seed, extra_args)
    if noise == "gaussian":
        return GaussianNoiseSampler(x, s)
    hi = float(sigmas.detach().to("cpu", torch.float64).max()) if sigmas.numel() else 1.0
    # one path over [0, sigma_max]: every step of the schedule (a final sigma of 0 included) is inside it
    return BrownianNoiseSampler(x, 0.0, hi if hi > 0 else 1.0, s)
