"""Behaviour lock across refactors: every solver of the registry and every KSampler entry FewStep
registers gives bit-identical outputs on a fixed set of cases (the analytic model of core/analytic.py,
eps and flow, 2, 4 and 7 steps plus the final step to 0, seed 7 for the stochastic ones).

The expected outputs, tests/data/behaviour_lock.safetensors, were written by
``python -m fewstep.tools.behaviour_lock`` from the code as it was before the #21 refactor. They pin
behaviour only (that a refactor changed nothing); correctness is proven by the other solver tests
(orders of convergence, closed forms, ComfyUI's own samplers)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fewstep.tools import behaviour_lock as lock

EXPECTED = load_file(str(lock.FIXTURE))
CASES = lock.all_cases()


def test_every_case_is_pinned_and_every_pin_is_a_case():
    keys = {f"{n}/{f}/{s}" for n in CASES for f in lock.FAMILIES for s in lock.STEPS}
    assert keys == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_are_bit_identical(name):
    got = lock.compute({name: CASES[name]})
    for key, value in got.items():
        want = EXPECTED[key]
        assert value.dtype == want.dtype and value.shape == want.shape, key
        assert torch.equal(value, want), f"{key}: max |diff| {(value - want).abs().max().item():.3g}"


def test_the_lock_can_fail():
    """A planted change (one step fewer) is caught: the cases are not degenerate."""
    name = "solver/dpmpp_2m"
    out = lock.compute({name: lambda m, x, s, e, f: CASES[name](m, x, s[1:], e, f)})
    assert not all(torch.equal(v, EXPECTED[k]) for k, v in out.items())
