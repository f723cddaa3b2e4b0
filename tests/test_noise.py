"""Seeded noise samplers (no ComfyUI)."""
from __future__ import annotations


import math

import pytest
import torch

from fewstep.samplers.noise import (BrownianNoiseSampler, BrownianPath, GaussianNoiseSampler,
                                    make_noise_sampler)


def test_brownian_increments_do_not_depend_on_query_order():
    x = torch.zeros(3, 5)
    a = BrownianNoiseSampler(x, 0.0, 10.0, seed=4)
    b = BrownianNoiseSampler(x, 0.0, 10.0, seed=4)
    qa = [a(9.0, 7.5), a(7.5, 3.1), a(3.1, 0.2)]
    qb = [b(3.1, 0.2), b(9.0, 7.5), b(7.5, 3.1)]
    qb = [qb[1], qb[2], qb[0]]
    for u, v in zip(qa, qb):
        assert torch.equal(u, v)
    assert not torch.equal(qa[0], BrownianNoiseSampler(x, 0.0, 10.0, seed=5)(9.0, 7.5))


def test_brownian_refinement_is_the_same_path():
    """W(t2) - W(t0) = (W(t1) - W(t0)) + (W(t2) - W(t1)): a coarse increment is the sum of the fine ones."""
    p = BrownianPath((1000,), 0.0, 14.6, seed=2)
    coarse = p(2.0) - p(9.0)
    fine = sum(p(b) - p(a) for a, b in [(9.0, 6.3), (6.3, 4.4), (4.4, 2.0)])
    assert torch.allclose(coarse, fine, atol=1e-12)


def test_brownian_increment_statistics():
    """Normalised increments are N(0, 1); disjoint increments are uncorrelated."""
    ns = BrownianNoiseSampler(torch.zeros(40000), 0.0, 14.6, seed=9)
    steps = [14.6, 9.1, 5.0, 2.2, 0.9, 0.31, 0.1, 0.0301, 0.03]
    zs = [ns(a, b) for a, b in zip(steps[:-1], steps[1:])]
    for z in zs:
        assert abs(float(z.mean())) < 0.03 and abs(float(z.var()) - 1) < 0.04
    for u, v in zip(zs[:-1], zs[1:]):
        assert abs(float((u * v).mean())) < 0.03


def test_brownian_dtype_device_and_sign():
    x = torch.zeros(2, 3, dtype=torch.float16)
    ns = BrownianNoiseSampler(x, 0.0, 1.0, seed=1)
    z = ns(0.8, 0.5)
    assert z.dtype == torch.float16 and z.shape == x.shape
    assert torch.allclose(ns(0.5, 0.8).float(), -z.float(), atol=1e-3)


def test_gaussian_sampler_is_seeded():
    x = torch.zeros(4, 4, dtype=torch.float32)
    a, b = GaussianNoiseSampler(x, 3), GaussianNoiseSampler(x, 3)
    assert torch.equal(a(1.0, 0.5), b(1.0, 0.5)) and torch.equal(a(0.5, 0.2), b(0.5, 0.2))
    assert not torch.equal(GaussianNoiseSampler(x, 3)(1, 0), GaussianNoiseSampler(x, 4)(1, 0))
    assert a(0.2, 0.1).dtype == torch.float32


def test_make_noise_sampler_seed_resolution_and_passthrough():
    x = torch.zeros(2, 3)
    sig = torch.tensor([5.0, 1.0, 0.0])
    given = lambda s, t: torch.ones_like(x)  # noqa: E731
    assert make_noise_sampler(x, sig, "brownian", None, {"seed": 1}, given) is given
    via_extra = make_noise_sampler(x, sig, "brownian", None, {"seed": 12})(5.0, 1.0)
    explicit = make_noise_sampler(x, sig, "brownian", 12, {"seed": 99})(5.0, 1.0)
    default = make_noise_sampler(x, sig, "brownian", None, None)(5.0, 1.0)
    assert torch.equal(via_extra, explicit)
    assert torch.equal(default, make_noise_sampler(x, sig, "brownian", 0, None)(5.0, 1.0))
    assert isinstance(make_noise_sampler(x, sig, "gaussian", 1), GaussianNoiseSampler)
    with pytest.raises(ValueError, match="noise"):
        make_noise_sampler(x, sig, "uniform", 1)


def test_sde_solver_uses_given_noise_sampler():
    from fewstep.samplers import sample_dpmpp_sde
    calls = []

    def ns(s, t):
        calls.append((float(s), float(t)))
        return torch.zeros(1, 3)

    m = lambda x, s, **k: torch.zeros_like(x)  # noqa: E731
    sample_dpmpp_sde(m, torch.ones(1, 3), torch.tensor([3.0, 2.0, 1.0, 0.0]), noise_sampler=ns)
    assert calls == [(3.0, 2.0), (2.0, 1.0)]


def test_the_seed_mix_is_splitmix64():
    """One value: splitmix64's first output from state ``golden ^ v`` (so v = golden starts from state 0,
    whose first output is the reference implementation's published 0xE220A8397B1DCDAF), kept to 63 bits."""
    from fewstep.samplers.noise import _mix
    assert _mix(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF & ((1 << 63) - 1)


def test_a_brownian_path_needs_an_interval():
    with pytest.raises(ValueError, match="t1 > t0"):
        BrownianPath((2, 3), 1.0, 1.0)


def test_brownian_increments_on_an_interval_away_from_0_have_their_variance():
    """On [t0, t1] with t0 > 0: W(t1) - W(t0) ~ N(0, t1 - t0), and so is every sub-increment's (b - a)."""
    p = BrownianPath((40000,), 4.0, 5.0, seed=3)
    whole = p(5.0) - p(4.0)
    assert abs(float(whole.var()) - 1.0) < 0.04
    part = p(4.75) - p(4.25)
    assert abs(float(part.var()) - 0.5) < 0.02


def test_a_brownian_query_descends_at_most_depth_levels():
    """``depth`` bounds the tree: a fresh query computes at most ``depth`` midpoint nodes, then bridges."""
    p = BrownianPath((3,), 0.0, 1.0, seed=1, depth=4)
    calls = []
    node = p._node
    p._node = lambda *a: calls.append(a) or node(*a)
    p(0.3)
    assert len(calls) == 4
    assert [c[4] for c in calls] == [0, 1, 2, 3]      # one node per level, from the root down
    # the node of level d is the dyadic interval that holds t: index floor(t 2^d)
    for t in (0.3, 0.71, 0.05):
        calls.clear()
        p = BrownianPath((3,), 0.0, 1.0, seed=1, depth=4)
        node = p._node
        p._node = lambda *a, node=node: calls.append(a) or node(*a)
        p(t)
        assert [(c[4], c[5]) for c in calls] == [(d, math.floor(t * 2 ** d)) for d in range(4)], t
