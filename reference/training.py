"""Training helpers shared by ``tools/train_reference.py`` and its tests (plain torch).

* ``init_weights_``: ComfyUI's layers skip weight initialisation, so every parameter is set here
  from a seed (fan-in scaled normal for convolutions and linear layers, unit norm weights, zero
  biases; output layers named in ``zero`` start at zero as in diffusion UNets).
* ``Ema``: exponential moving average of parameters.
* ``lr_at``: linear warm-up then cosine decay to ``floor`` x the peak.
* ``Progress``: one line per report with loss, iterations per second, wall and CPU time, and the
  ETA of the stage and of the whole run.
* ``fingerprint``: sha256 over the tensors of a file (names, dtypes, shapes, bytes), metadata not
  included, so a test can check the shipped file is the one the script wrote.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time

import torch


def init_weights_(module: torch.nn.Module, seed: int, zero=()) -> torch.nn.Module:
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if any(name.startswith(z) for z in zero):
                p.zero_()
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return module


class Ema:
    """EMA of parameters with the usual warm-up: the decay of update k (0-based) is
    ``min(decay, (1 + k) / (10 + k))``, so the shadow forgets the initial weights in a few hundred
    steps instead of keeping ``decay ** steps`` of them (8% after 2500 steps at 0.999)."""

    def __init__(self, params, decay: float):
        self.params = [p for p in params]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = float(decay)
        self.updates = 0

    def current_decay(self) -> float:
        k = self.updates
        return min(self.decay, (1.0 + k) / (10.0 + k))

    @torch.no_grad()
    def update(self):
        d = self.current_decay()
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, params):
        for s, p in zip(self.shadow, params):
            p.copy_(s)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def fingerprint(tensors: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Progress:
    """Progress lines for one run of several stages with planned iteration counts.
    ``nominal``: planned seconds per iteration of each stage (to estimate stages not yet run; once a
    stage runs, its measured rate replaces the nominal one, and later stages are rescaled by the
    ratio measured/nominal of the stages run so far)."""

    def __init__(self, plan: dict, nominal: dict, out=sys.stdout):
        self.plan, self.nominal, self.out = dict(plan), dict(nominal), out
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.done = {}
        self.stage = None

    def start(self, stage: str):
        self.stage, self.ts, self.cs = stage, time.perf_counter(), time.process_time()
        self.loss = None

    def _ratio(self):
        num = sum(self.done[s] for s in self.done)
        den = sum(self.nominal[s] * self.plan[s] for s in self.done)
        return num / den if den > 0 else 1.0

    def report(self, step: int, loss: float | None = None, extra: str = ""):
        """``step``: iterations finished in the current stage."""
        if loss is not None:
            self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        el = time.perf_counter() - self.ts
        total = self.plan[self.stage]
        rate = el / max(1, step)
        stage_left = rate * (total - step)
        ratio = rate / self.nominal[self.stage] if self.nominal.get(self.stage) else self._ratio()
        later = [s for s in self.plan if s not in self.done and s != self.stage]
        run_left = stage_left + sum(self.nominal[s] * self.plan[s] * ratio for s in later)
        cpu = time.process_time() - self.c0
        wall = time.perf_counter() - self.t0
        msg = (f"[{self.stage}] {step}/{total} " + (f"loss {self.loss:.4g} " if self.loss is not None else "")
               + f"{1000 * rate:.0f} ms/it | stage ETA {_hms(stage_left)} | run {_hms(wall)} "
               f"(cpu {_hms(cpu)}, cpu/wall {cpu / max(wall, 1e-9):.2f}) ETA {_hms(run_left)}"
               + (f" | {extra}" if extra else ""))
        print(msg, file=self.out, flush=True)

    def finish(self) -> dict:
        el = time.perf_counter() - self.ts
        self.done[self.stage] = el
        return {"stage": self.stage, "iterations": self.plan[self.stage], "wall_s": round(el, 2),
                "s_per_it": round(el / max(1, self.plan[self.stage]), 4),
                "cpu_s": round(time.process_time() - self.cs, 2)}


def _hms(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
