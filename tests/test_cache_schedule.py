"""The pure scheduling logic of the caching patches (core/cache_schedule.py), without ComfyUI."""
from __future__ import annotations

import pytest

from fewstep.core.cache_schedule import dit_block_plan, full_steps, gate_step


def test_full_steps_uniform_and_interval_1():
    assert full_steps(10, 3) == [0, 3, 6, 9]
    assert full_steps(7, 3) == [0, 3, 6]
    assert full_steps(5, 1) == [0, 1, 2, 3, 4]
    assert full_steps(0, 3) == []
    assert full_steps(1, 3) == [0] and full_steps(1, 3, "non-uniform") == [0]   # a 1-step run is one full step
    s = full_steps(50, 5, "non-uniform", 0.3, 1.4)
    assert len(s) == 10 and s[0] == 0 and s == sorted(set(s))


@pytest.mark.parametrize("n,lead,trail", [(5, 1, 1), (5, 0, 0), (5, 4, 0), (5, 0, 4), (12, 2, 3), (1, 0, 0)])
def test_block_plan_ranges(n, lead, trail):
    p = dit_block_plan(n, lead, trail)
    assert list(p.cached_blocks) == list(range(lead, n - trail))
    assert p.recomputed_blocks == list(range(lead)) + list(range(n - trail, n))
    roles = [p.role(i) for i in range(n)]
    assert roles.count("run") == lead + trail
    cached = [r for r in roles if r != "run"]
    if len(cached) == 1:
        assert cached == ["entry+exit"]
    else:
        assert cached[0] == "entry" and cached[-1] == "exit" and set(cached[1:-1]) <= {"middle"}
    assert roles[:lead] == ["run"] * lead and roles[n - trail:] == ["run"] * trail


@pytest.mark.parametrize("n,lead,trail", [(5, 3, 2), (5, 5, 0), (5, -1, 0), (4, 0, 4), (0, 0, 0)])
def test_block_plan_rejects_nothing_left_to_cache(n, lead, trail):
    with pytest.raises(ValueError, match="dit_leading_blocks|no transformer blocks"):
        dit_block_plan(n, lead, trail)


def test_block_plan_error_names_the_widgets_and_range():
    msg = r"dit_leading_blocks \+ dit_trailing_blocks must be in \[0, 4\].*5 transformer"
    with pytest.raises(ValueError, match=msg):
        dit_block_plan(5, 3, 2)


def test_gate_step():
    assert gate_step(10, 0.4) == 4
    assert gate_step(10, 1.0) == 10
    assert gate_step(10, 0.0) == 0
    assert gate_step(7, 0.5) == 4  # half up
    assert gate_step(8, 0.3125) == 3  # 2.5 -> 3
    with pytest.raises(ValueError, match="gate_percent"):
        gate_step(10, 1.5)


# ------------------------------------------------------------------------------------------------
# independent references for the pure patch logic (these ran only inside ComfyUI before #21)
import math  # noqa: E402

from fewstep.core.cache_schedule import (UNetBlocks, cached_step_mask, self_attn_reuse,  # noqa: E402
                                         steps_in_sigma_window)


def _nonuniform_by_hand(total, interval, center=0.3, power=1.4):
    """DeepCache's non-uniform 1:N schedule written out in plain Python (no numpy): the points
    a + (b - a) j / k, j < k, mapped by sign(l)|l|^p + c and truncated; p lowered by 0.02 until k distinct."""
    k = math.ceil(total / interval)
    c = center * total
    p = power
    while p > 1.0:
        a, b = -(c ** (1 / p)), (total - c) ** (1 / p)
        pts = [a + (b - a) * j / k for j in range(k)]
        mapped = [int(math.copysign(abs(v) ** p, v) + c) for v in pts]
        steps = sorted({0} | {m for m in mapped if 0 <= m < total})
        if len(steps) == k:
            return steps
        p -= 0.02
    return list(range(0, total, interval))


def test_full_steps_nonuniform_worked_example():
    """T=10, N=3: k=4, c=3, p=1.4: l = -2.192, -0.641, 0.910, 2.461 -> 0, 2.46, 3.88, 6.53 -> {0, 2, 3, 6}."""
    assert full_steps(10, 3, "non-uniform") == [0, 2, 3, 6]


@pytest.mark.parametrize("total,interval", [(10, 3), (20, 2), (25, 3), (50, 5), (50, 3), (30, 4), (8, 5), (100, 7)])
@pytest.mark.parametrize("center,power", [(0.3, 1.4), (0.5, 1.2), (0.2, 2.0)])
def test_full_steps_nonuniform_matches_the_formula(total, interval, center, power):
    got = full_steps(total, interval, "non-uniform", center, power)
    assert got == _nonuniform_by_hand(total, interval, center, power)
    assert len(got) == math.ceil(total / interval) and got[0] == 0


def test_full_steps_nonuniform_is_denser_near_the_centre():
    s = full_steps(50, 5, "non-uniform", 0.3, 1.4)
    gaps = [b - a for a, b in zip(s, s[1:])]
    near = min(range(len(s)), key=lambda i: abs(s[i] - 15))
    assert max(gaps) > min(gaps) and gaps[min(near, len(gaps) - 1)] <= min(gaps[0], gaps[-1])


def test_steps_in_sigma_window_bounds():
    """(lo, hi]: a step starting exactly at hi is in, exactly at lo is out."""
    assert steps_in_sigma_window([10.0, 5.0, 2.0, 1.0, 0.5], 5.0, 1.0) == [False, True, True, False, False]
    assert steps_in_sigma_window([], 1.0, 0.0) == []


def test_cached_step_mask():
    window = [True, True, True, False, True, True]
    assert cached_step_mask(6, [0, 3], window) == [False, True, True, False, True, True]
    assert cached_step_mask(6, range(6), window) == [False] * 6
    assert cached_step_mask(3, [], [False, True, True]) == [False, True, True]


def test_self_attn_reuse_alternates_after_the_gate():
    assert [self_attn_reuse(s, 3) for s in range(9)] == [False, False, False, False, True, False, True, False, True]
    assert [self_attn_reuse(s, 0) for s in range(4)] == [False, True, False, True]


def test_gate_step_rounds_half_up_not_to_even():
    """Python's round() would give 2 and 0 here (banker's rounding)."""
    assert gate_step(10, 0.25) == 3
    assert gate_step(4, 0.125) == 1
    assert gate_step(10, 0.35) == 4 and gate_step(10, 0.36) == 4 and gate_step(10, 0.34) == 3


# SD1.5's UNet: transformers in input blocks 1, 2, 4, 5, 7, 8, the middle block and output blocks 3..11
SD15 = UNetBlocks((0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0, 0), 1, (0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1))


@pytest.mark.parametrize("depth", range(12))
def test_unet_blocks_skipped_transformers_are_all_but_the_ones_that_run(depth):
    """A cached step runs input blocks 0..depth and output blocks entry..11; it skips every other
    transformer (16 in all for SD1.5)."""
    entry = SD15.entry_block(depth)
    assert entry == 11 - depth
    runs = sum(SD15.tf_in[:depth + 1]) + sum(SD15.tf_out[entry:])
    assert SD15.skipped_transformers(depth) == 16 - runs


def test_unet_blocks_sd15_depth_0_and_limits():
    assert SD15.skipped_transformers(0) == 15 and SD15.max_depth == 11
    assert UNetBlocks((0, 1, 0), 0, (1, 0, 0, 0)).max_depth == 2
