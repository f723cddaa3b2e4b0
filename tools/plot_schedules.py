"""Draw every FewStep schedule (10 steps) for an eps model (SD1.5 grid) and a flow model (shift 3):
``python tools/plot_schedules.py [out.png]`` (needs matplotlib)."""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fewstep.core.model_sigmas import ModelSigmas  # noqa: E402
from fewstep.schedules import SCHEDULE_NAMES, get_schedule  # noqa: E402


def main(out="docs/img/schedules.png", steps=10):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, ms, title in zip(axes, (ModelSigmas.discrete_vp(), ModelSigmas.flow(3.0)),
                             ("eps (SD1.5 sigmas)", "flow (SD3-style, shift 3)")):
        for name in SCHEDULE_NAMES:
            s = get_schedule(name, steps, ms)[:-1]
            ax.semilogy(range(steps), s.numpy(), marker="o", ms=3, label=name)
        ax.set_title(f"{title}, {steps} steps")
        ax.set_xlabel("step")
        ax.set_ylabel("sigma (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
