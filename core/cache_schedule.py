"""Pure scheduling logic of FewStep's caching patches (no ComfyUI): which steps run in full, which
transformer blocks a DiT recomputes on a cached step, and T-GATE's gate step.

* ``full_steps(total, interval, mode, center, power)``: DeepCache's full (uncached) steps.
* ``dit_block_plan(n_blocks, leading, trailing)``: a ``DiTBlockPlan`` -- blocks ``0..leading-1`` and
  the last ``trailing`` blocks always run; the blocks in between (the *middle*) are skipped on a
  cached step and replaced by the residual they added on the last full step (Delta-DiT / FORA style).
* ``gate_step(total, gate_percent)``: the first gated step of T-GATE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def full_steps(total: int, interval: int, mode: str = "uniform", center: float = 0.3, power: float = 1.4) -> list[int]:
    """Sorted indices of the full (uncached) steps among ``total`` steps.

    ``uniform``: every ``interval``-th step. ``non-uniform``: DeepCache's 1:N schedule, denser around
    the centre step ``c = center*total`` with power ``p``: ``l = linspace(-c^(1/p), (T-c)^(1/p), k)``,
    steps ``= unique(int(sign(l)|l|^p + c))`` with ``k = ceil(T/N)`` (``p`` lowered by 0.02 until k
    distinct steps come out); step 0 is always full."""
    if total <= 0:
        return []
    if interval <= 1:
        return list(range(total))
    if mode == "uniform":
        return list(range(0, total, interval))
    k = math.ceil(total / interval)
    c = float(center) * total
    p = float(power)
    while p > 1.0:
        a = -(c ** (1.0 / p))
        b = (total - c) ** (1.0 / p)
        ls = np.linspace(a, b, k, endpoint=False)
        idx = np.sign(ls) * np.abs(ls) ** p + c
        steps = sorted({0} | {int(v) for v in idx if int(v) < total})   # idx >= -c + c = 0
        if len(steps) == k:
            return steps
        p -= 0.02
    return list(range(0, total, interval))


@dataclass(frozen=True)
class DiTBlockPlan:
    n_blocks: int
    leading: int
    trailing: int

    @property
    def first_cached(self) -> int:
        """Index of the first middle block (its input is the cache's entry state)."""
        return self.leading

    @property
    def last_cached(self) -> int:
        """Index of the last middle block (its output is the cache's exit state)."""
        return self.n_blocks - 1 - self.trailing

    @property
    def cached_blocks(self) -> range:
        return range(self.first_cached, self.last_cached + 1)

    @property
    def recomputed_blocks(self) -> list[int]:
        return [i for i in range(self.n_blocks) if not (self.first_cached <= i <= self.last_cached)]

    def role(self, i: int) -> str:
        """'run' (always recomputed), 'entry' (first middle block), 'exit' (last middle block; a block
        that is both is 'entry+exit'), or 'middle'."""
        if not (self.first_cached <= i <= self.last_cached):
            return "run"
        if i == self.first_cached and i == self.last_cached:
            return "entry+exit"
        if i == self.first_cached:
            return "entry"
        if i == self.last_cached:
            return "exit"
        return "middle"


def dit_block_plan(n_blocks: int, leading: int, trailing: int, what: str = "FewStepDeepCache") -> DiTBlockPlan:
    """The block plan, or a ValueError naming the widgets and the allowed range: at least one block
    must be left to cache (``leading + trailing <= n_blocks - 1``)."""
    n, lead, trail = int(n_blocks), int(leading), int(trailing)
    if n < 1:
        raise ValueError(f"{what}: the model has no transformer blocks to cache")
    if lead < 0 or trail < 0 or lead + trail > n - 1:
        raise ValueError(f"{what}: dit_leading_blocks + dit_trailing_blocks must be in [0, {n - 1}] for this model "
                         f"({n} transformer blocks; at least one block must be cached), got "
                         f"dit_leading_blocks={lead}, dit_trailing_blocks={trail}")
    return DiTBlockPlan(n, lead, trail)


def gate_step(total: int, gate_percent: float) -> int:
    """T-GATE's first gated step: ``round(gate_percent * total)`` (half up). ``gate_percent`` 1.0 gives
    ``total``: no step is gated."""
    if not (0.0 <= float(gate_percent) <= 1.0):
        raise ValueError(f"gate_percent must be in [0, 1], got {gate_percent}")
    return int(math.floor(float(gate_percent) * int(total) + 0.5))


def steps_in_sigma_window(step_sigmas, sigma_hi: float, sigma_lo: float) -> list[bool]:
    """Whether each step's starting sigma lies in (sigma_lo, sigma_hi] (a patch's start/end percent window,
    converted to sigmas by the model)."""
    return [bool(sigma_lo < float(s) <= sigma_hi) for s in step_sigmas]


def cached_step_mask(total: int, full, window) -> list[bool]:
    """DeepCache's cached steps: inside the window and not a full step."""
    full = set(full)
    return [bool(window[i]) and i not in full for i in range(total)]


def self_attn_reuse(step: int, gate: int) -> bool:
    """T-GATE's self-attention cache: after the gate, every other step (gate+1, gate+3, ...) reuses the
    self-attention output computed on the step before."""
    return step >= gate and (step - gate) % 2 == 1


@dataclass(frozen=True)
class UNetBlocks:
    """A UNet's transformer counts per input block, in the middle block and per output block: where
    DeepCache enters the decoder at a depth, and how many transformers a cached step skips (so
    ComfyUI's ``transformer_index`` stays right for the blocks that run)."""
    tf_in: tuple
    tf_mid: int
    tf_out: tuple

    @property
    def n_in(self) -> int:
        return len(self.tf_in)

    @property
    def n_out(self) -> int:
        return len(self.tf_out)

    @property
    def max_depth(self) -> int:
        return min(self.n_in, self.n_out) - 1

    def entry_block(self, depth: int) -> int:
        """The output block whose input (main branch) DeepCache caches at this depth."""
        return self.n_out - 1 - depth

    def skipped_transformers(self, depth: int) -> int:
        """Transformers a cached step skips: input blocks after ``depth``, the middle block, and the output
        blocks before the entry block."""
        return sum(self.tf_in[depth + 1:]) + self.tf_mid + sum(self.tf_out[:self.entry_block(depth)])
