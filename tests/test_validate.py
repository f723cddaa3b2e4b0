"""core/validate.py, the one validation layer: every error names the widget, the node and the range."""
import math

import pytest

from fewstep.core.validate import check_bool, check_choice, check_float, check_int


@pytest.mark.parametrize("good,want", [(1, 1), (3, 3), (2.0, 2)])
def test_check_int_accepts_whole_numbers_in_range(good, want):
    got = check_int(good, 1, 3, "order")
    assert got == want and type(got) is int


@pytest.mark.parametrize("bad", [0, 4, 2.5, True, "2", None, math.nan, math.inf])
def test_check_int_rejects_with_widget_node_and_range(bad):
    with pytest.raises(ValueError, match=r"^FewStepDEIS: order must be a whole number in \[1, 3\], got "):
        check_int(bad, 1, 3, "order", "FewStepDEIS")


def test_check_float_bounds_open_and_closed():
    assert check_float(0.0, 0.0, 1.0, "eta") == 0.0 and check_float(1, 0.0, 1.0, "eta") == 1.0
    assert check_float(math.inf, 0.0, math.inf, "s_tmax") == math.inf
    with pytest.raises(ValueError, match=r"^denoise must be a number in \(0.0, 1.0\], got 0.0"):
        check_float(0.0, 0.0, 1.0, "denoise", lo_open=True)
    for bad in (-1e-9, 1.0000001, math.nan, True, "x", None):
        with pytest.raises(ValueError, match=r"^FewStepTCD: gamma must be a number in \[0.0, 1.0\]"):
            check_float(bad, 0.0, 1.0, "gamma", "FewStepTCD")


def test_check_choice_and_bool():
    assert check_choice("rk", ("lower", "rk"), "warmup") == "rk"
    with pytest.raises(ValueError, match=r"^FewStepPNDM: warmup must be one of \['lower', 'rk'\], got 'x'"):
        check_choice("x", ("lower", "rk"), "warmup", "FewStepPNDM")
    assert check_bool(False, "corrector") is False
    with pytest.raises(ValueError, match=r"^corrector must be true or false, got 1"):
        check_bool(1, "corrector")
