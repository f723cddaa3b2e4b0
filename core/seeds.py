"""Seeds as the nodes' INT widgets give them (0 .. 2^64 - 1) folded into what every stage's random
generator accepts: torch.Generator.manual_seed takes at most 2^64 - 1, and the stages derive seeds
from the one they get (the AYS estimator seed*2 + 1, OLSS's teacher runs seed + s). Folding once, at
the node, means every stage sees the same value and every widget value works."""
from __future__ import annotations

#: seeds are folded into [0, SEED_RANGE): seeds below it are used unchanged
SEED_RANGE = 2 ** 63
WIDGET_MAX = 2 ** 64 - 1


def fold_seed(seed: int) -> int:
    """``seed`` (a whole number in [0, 2^64 - 1]) modulo 2^63: unchanged below 2^63, and small enough
    that seed*2 + 1 and seed + (a few thousand) stay inside the generator's range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= WIDGET_MAX:
        raise ValueError(f"seed must be a whole number in [0, {WIDGET_MAX}], got {seed!r}")
    return seed % SEED_RANGE
