"""Measured convergence orders of the deterministic FewStep solvers on the exact analytic model.

    python -m fewstep.samplers.convergence [--steps 20 40 80 160] [--family eps flow]

For each family: a 4-component Gaussian mixture on a 4x2x2 latent (small, so the asymptotic regime is
reachable), two start points, a lambda-uniform grid from sigma 10 (eps) / 0.9 (flow) to 0.05, and the
exact probability-flow endpoint (RK4, 1000 steps, float64). Prints a markdown table of the relative
endpoint errors and the least-squares order fitted over the step counts.
"""
from __future__ import annotations

import argparse
import math

import torch

from ..core import families
from ..core.analytic import AnalyticModel, reference_solve
from .registry import SOLVERS

SPAN = {"eps": (10.0, 0.05), "flow": (0.9, 0.05)}

#: option variants measured next to the registry defaults: label -> (solver, options, method order)
VARIANTS = {
    "dpmpp_3m +warmup=singlestep": ("dpmpp_3m", {"warmup": "singlestep"}, 3),
    "deis_3 +warmup=singlestep": ("deis_3", {"warmup": "singlestep"}, 3),
    "unipc_bh2 order 2": ("unipc_bh2", {"order": 2}, 3),
    "unipc_bh2 no corrector": ("unipc_bh2", {"use_corrector": False}, 3),
}

#: asymptotic order on this (lambda-uniform) grid where it differs from the method order, and why
ASYMPTOTIC = {
    "dpmpp_3m": (2, "first-order start"),
    "deis_3": (2, "first-order start"),
    "unipc_bh1": (3, "order-1 (+UniC) start; UniC-3 steps are 4th order"),
    "unipc_bh2": (3, "order-1 (+UniC) start; UniC-3 steps are 4th order"),
    "unipc_bh2 no corrector": (2, "first-order start"),
    "pndm": (2, "first-order start; fixed coefficients"),
    "pndm_rk": (2, "fixed PLMS coefficients on steps not uniform in rho (4 on rho-uniform steps)"),
}


def lambda_grid(family: str, s_hi: float, s_lo: float, n: int) -> torch.Tensor:
    lam = torch.linspace(families.lam(s_hi, family), families.lam(s_lo, family), n + 1, dtype=torch.float64)
    s = families.sigma_from_lam(lam, family)
    s[0], s[-1] = s_hi, s_lo
    return s


def fitted_order(ns, errs) -> float:
    lx = [math.log(n) for n in ns]
    ly = [-math.log(max(e, 1e-300)) for e in errs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def measure(family: str, ns=(20, 40, 80, 160)):
    """[(name, method order, (asymptotic order, reason), errors, fitted order)] for every deterministic
    solver and VARIANTS.
    UniPC is run with lower_order_final=False (the reference's always-on final lowering makes the last
    step first order)."""
    am = AnalyticModel(family, 3.0, 4, 0)
    model = am.denoiser(1.0)
    s_hi, s_lo = SPAN[family]
    x = am.noise((2, 4, 2, 2), 1) * s_hi
    ref = reference_solve(model, x, s_hi, s_lo, steps=1000)
    rows = []
    cases = [(n, n, {}, s.order) for n, s in SOLVERS.items() if not s.stochastic]
    cases += [(label, base, kw, order) for label, (base, kw, order) in VARIANTS.items()]
    for label, base, kw, order in cases:
        spec = SOLVERS[base]
        kw = dict(kw)
        if base.startswith("unipc"):
            kw.setdefault("lower_order_final", False)
        errs = []
        for n in ns:
            y = spec(model, x, lambda_grid(family, s_hi, s_lo, n), family=family, **kw)
            errs.append(float((y - ref).norm() / ref.norm()))
        asym = ASYMPTOTIC.get(label, (order, ""))
        rows.append((label, order, asym, errs, fitted_order(ns, errs)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 40, 80, 160])
    ap.add_argument("--family", nargs="+", default=["eps", "flow"], choices=list(families.FAMILIES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ns = tuple(args.steps)
    for fam in args.family:
        print(f"\n### {fam} (lambda-uniform, sigma {SPAN[fam][0]} -> {SPAN[fam][1]})\n")
        print("| solver | method order | asymptotic here | " + " | ".join(f"err N={n}" for n in ns)
              + " | measured order |")
        print("|---|---|---|" + "---|" * len(ns) + "---|")
        for label, order, (asym, why), errs, p in measure(fam, ns):
            note = f"{asym} ({why})" if why else f"{asym}"
            print(f"| {label} | {order} | {note} | " + " | ".join(f"{e:.2e}" for e in errs) + f" | {p:.2f} |")


if __name__ == "__main__":
    main()
