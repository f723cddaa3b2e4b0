"""The pure scheduling logic of the caching patches (core/cache_schedule.py), without ComfyUI."""
from __future__ import annotations

import pytest

from fewstep.core.cache_schedule import dit_block_plan, full_steps, gate_step


def test_full_steps_uniform_and_interval_1():
    assert full_steps(10, 3) == [0, 3, 6, 9]
    assert full_steps(7, 3) == [0, 3, 6]
    assert full_steps(5, 1) == [0, 1, 2, 3, 4]
    assert full_steps(0, 3) == []
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
