"""Benchmarks on FewStep's trained reference model (issue 16 §6), inside a real in-process ComfyUI (CPU).

    python bench/reference.py solvers  [--seeds N] [--cfg C ...] [--quick] [--no-write]
    python bench/reference.py patches  [--seeds N] [--cfg C] [--steps S] [--quick] [--no-write]
    python bench/reference.py freeu    [--seeds N] [--cfg C ...] [--steps S] [--quick] [--no-write]
    python bench/reference.py fitted   [--seeds N] [--cfg C] [--quick] [--no-write]
    python bench/reference.py samples  [--cfg C] [--steps S] [--no-write]   (the pictures in docs/img)
    python bench/reference.py gate     [--seeds N] [--cfg C ...] [--steps S]   (issue 16's check, per cfg and seed)
    (every subcommand: --weights DIR to use other weight files than reference/weights)

The model is the shipped one (reference/weights, loaded through the FewStep Reference Model node's
loader, fingerprints checked): an SD1.5-layout eps UNet, 4x8x8 latents, 10 classes. Every run goes
through ComfyUI's CFGGuider.sample with a batch of noise seeds; image i of the batch is drawn with
class ``label_of(i)`` (the labels and seeds of the evaluation are never used by a fitting step).

Metrics:
* **error**: ||x_N - x_ref|| / ||x_ref|| over the batch, x_ref the *converged* sample of the same
  model from the same noise: classic RK4 in log sigma (``core.analytic.reference_solve``, 4 calls a
  step) with REF_STEPS steps through the same guider. Its own convergence is measured against
  REF_STEPS / 2 steps and printed (it must be far below the errors it judges).
* **accuracy / Fréchet**: the latents decoded by the reference VAE and scored by the shipped
  classifier (reference/quality.py): class accuracy and the Fréchet distance to the data's features;
  "data" is what as many data images with the same labels score (the floor at this N).

Subcommands:
* ``solvers``: FewStep's solvers x schedules against ComfyUI's best built-in sampler + scheduler at
  NFE 5, 10 and 20 (the largest step count whose model calls fit the budget), on a grid of the
  strongest entries of each side on the analytic-model bench (docs/solvers.md).
* ``patches``: DeepCache (N = 2, 3, 5), T-GATE (gate 40%) and both at S steps of dpmpp_2m + karras,
  against the honest baseline: the unpatched model at the largest step count whose UNet FLOPs
  (torch.utils.flop_counter, every conv / matmul / attention of the run) do not exceed the patched
  run's.
* ``freeu``: FreeU (v1 and v2, the authors' SD1.x preset) against the unpatched model: accuracy and
  Fréchet distance (FreeU aims at quality, not at the unpatched sample).
* ``fitted``: the OLSS solver and the AYS-optimised schedule, fitted through their nodes on classes
  0-4 and fitting seeds, evaluated on classes 5-9 and other seeds, against the best fixed solver +
  schedule at the same NFE on the same evaluation set.

Writes its table into docs/reference-bench.md between the subcommand's markers (atomically).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from _doc import write_block  # noqa: E402

import comfy_host  # noqa: E402

PAGE = "reference-bench.md"
NOISE_SEED = 4321
FIT_SEED = 99
REF_STEPS = 200          # RK4 steps of the converged sample (800 model calls)
BUDGETS = (5, 10, 20)
DEFAULT_CFG = 3.0

#: the strongest deterministic entries of each side on the analytic-model bench (docs/solvers.md)
#: (a grid of ~70 combinations x 3 budgets: ~10 min of CPU here at 0.15-0.25 s per call)
BUILTIN_SAMPLERS = ("euler", "dpmpp_2m", "uni_pc", "uni_pc_bh2", "deis", "ipndm", "gradient_estimation")
BUILTIN_SCHEDULERS = ("karras", "exponential", "simple", "beta", "kl_optimal")
#: ComfyUI schedulers FewStep's solvers are also tried on
COMFY_SCHEDULERS_FOR_FEWSTEP = ("exponential", "beta")
_PP = dict(eta=1.0, s_noise=1.0, noise_type="brownian")
FEWSTEP_SOLVERS = (
    ("FewStepDPMSolverPP", dict(mode="3m", lower_order_final=True, **_PP), "dpmpp_3m"),
    ("FewStepUniPC", dict(variant="bh1", order=3, corrector=True, lower_order_final=True), "unipc_bh1_o3"),
    ("FewStepUniPC", dict(variant="bh2", order=3, corrector=True, lower_order_final=True), "unipc_bh2_o3"),
    ("FewStepDEIS", dict(order=3), "deis_3"),
    ("FewStepPNDM", dict(warmup="lower"), "pndm_lower"),
)
#: (polyexponential rho 1 is ComfyUI's exponential, tried through COMFY_SCHEDULERS_FOR_FEWSTEP)
FEWSTEP_SCHEDULES = (("karras", 7.0), ("logsnr_uniform", 7.0), ("time_quadratic", 7.0), ("ays", 7.0), ("beta", 7.0))
QUICK = dict(builtin_samplers=("euler", "dpmpp_2m"), builtin_schedulers=("karras", "simple"),
             fewstep_solvers=("dpmpp_3m", "unipc_bh1_o3"), fewstep_schedules=("logsnr_uniform", "ays"))


# ------------------------------------------------------------------------------------------------
class Reference:
    """The shipped model in ComfyUI: MODEL, tokens, VAE, classifier + statistics."""

    def __init__(self, weights=None):
        path = comfy_host.find_comfyui()
        if path is None:
            raise SystemExit("bench/reference.py: no ComfyUI found ($COMFYUI_PATH, an enclosing ComfyUI, ~/comfy/ComfyUI)")
        self.host = comfy_host.import_comfyui(path)
        from fewstep.nodes import reference as node
        from fewstep.reference import quality, spec
        if weights:
            spec.WEIGHTS_DIR = Path(weights)
        self.node, self.quality, self.spec = node, quality, spec
        (self.patcher, self.tokens), self.meta = node._load("unet_eps", "bench/reference.py")
        self.vae, _ = node._load("vae", "bench/reference.py")
        (self.clf, self.stats), _ = node._load("classifier", "bench/reference.py")
        self.ms = self.patcher.get_model_object("model_sampling")

    def conds(self, labels):
        pos = [[self.tokens[labels].clone(), {}]]
        neg = [[self.tokens[[self.spec.NULL_INDEX] * len(labels)].clone(), {}]]
        return pos, neg

    def score(self, latents, labels) -> dict:
        with torch.inference_mode():
            imgs = self.vae.decode(latents.float())
        x = self.quality.check_images(imgs, "bench")
        s = self.quality.score(self.clf, self.stats, x, labels)
        return {"accuracy": s["accuracy"], "frechet": s["frechet"]}

    def floor(self, labels) -> float:
        return self.quality.data_floor(self.clf, self.stats, labels)


class Case:
    """One evaluation set (labels, noise seeds, cfg) on one MODEL; ``run`` as bench/solvers.Case."""

    def __init__(self, ref: Reference, labels, cfg, noise_seed=NOISE_SEED, model=None):
        import comfy.samplers as cs
        self.ref, self.labels, self.cfg = ref, labels, float(cfg)
        self.family = "eps"
        self.patcher = model if model is not None else ref.patcher
        self.ms = ref.ms
        self.guider = cs.CFGGuider(self.patcher)
        self.guider.set_conds(*ref.conds(labels))
        self.guider.set_cfg(self.cfg)
        self.noise = torch.randn((len(labels), 4, 8, 8), generator=torch.Generator().manual_seed(noise_seed))
        self.noise_seed = noise_seed
        self._ref = {}
        self.last_per_seed = None
        self.last_out = None

    def sample(self, sampler, sigmas):
        with torch.inference_mode():
            return self.guider.sample(self.noise.clone(), torch.zeros_like(self.noise), sampler, sigmas.clone(),
                                      disable_pbar=True, seed=self.noise_seed)

    def converged(self, steps=None):
        steps = REF_STEPS if steps is None else steps
        if steps not in self._ref:
            import comfy.samplers as cs
            from fewstep.core.analytic import reference_solve

            def solve(model, x, sigmas, extra_args=None, callback=None, disable=None, **kw):
                ea = extra_args or {}
                return reference_solve(lambda xv, s: model(xv.float(), s.float(), **ea).double(), x,
                                       float(sigmas[0]), float(sigmas[-1]), steps=steps).float()

            sig = self.ms.sigmas.flip(0)
            sigmas = torch.cat([sig[:1], sig.new_zeros(1)]).float().cpu()
            self._ref[steps] = self.sample(cs.KSAMPLER(solve), sigmas).double()
        return self._ref[steps]

    def run(self, sampler, sigmas):
        from solvers import counting
        if float(sigmas[0]) < 0.999 * float(self.ms.sigma_max):
            return math.inf, 0
        counter, record = [0], {}
        out = self.sample(counting(sampler, counter, record), sigmas)
        self.last_per_seed, self.last_out = None, out
        if not torch.isfinite(out).all():
            return math.inf, counter[0]
        want = self.converged()
        self.last_per_seed = (((out.double() - want) ** 2).flatten(1).sum(1), (want ** 2).flatten(1).sum(1))
        return float((out.double() - want).norm() / want.norm()), counter[0]


def all_labels(n, offset=0, classes=None):
    classes = list(range(10)) if classes is None else list(classes)
    return torch.tensor([classes[(i + offset) % len(classes)] for i in range(n)])


def _fmt_score(s):
    return f"{100 * s['accuracy']:.0f}% / {s['frechet']:.3g}"


# ------------------------------------------------------------------------------------------------
def grid(case, budgets, quick, fewstep_scheds=None, log=print):
    """Best (error, label, per-seed, latents) per budget: ComfyUI built-ins, FewStep solver +
    FewStep schedule, FewStep solver + ComfyUI scheduler."""
    import comfy.samplers as cs
    from solvers import within_budget
    host = case.ref.host
    bs = QUICK["builtin_samplers"] if quick else BUILTIN_SAMPLERS
    bsch = QUICK["builtin_schedulers"] if quick else BUILTIN_SCHEDULERS
    fsol = [s for s in FEWSTEP_SOLVERS if not quick or s[2] in QUICK["fewstep_solvers"]]
    fsch = [s for s in (fewstep_scheds or FEWSTEP_SCHEDULES) if not quick or s[0] in QUICK["fewstep_schedules"]]
    sched_node = host.NODES["FewStepScheduler"]()
    rows = {}

    def consider(best, r, label):
        if r and r[0] < best[0]:
            return (r[0], f"{label} ({r[1]} steps, {r[2]} calls)", r[3], case.last_out)
        return best

    for b in budgets:
        none = (math.inf, None, None, None)
        bb, fb, mb = none, none, none
        for s in bs:
            for sch in bsch:
                r = within_budget(case, lambda: cs.sampler_object(s), lambda n: cs.calculate_sigmas(case.ms, sch, n).cpu(), b)
                bb = consider(bb, r, f"{s} + {sch}")
        for node, kw, label in fsol:
            for sch, rho in fsch:
                r = within_budget(case, lambda: host.NODES[node]().get_sampler(**kw)[0],
                                  lambda n: sched_node.get_sigmas(case.patcher, sch, n, 1.0, rho)[0], b)
                fb = consider(fb, r, f"{label} + {sch}")
            for sch in (bsch if quick else COMFY_SCHEDULERS_FOR_FEWSTEP):
                r = within_budget(case, lambda: host.NODES[node]().get_sampler(**kw)[0],
                                  lambda n: cs.calculate_sigmas(case.ms, sch, n).cpu(), b)
                mb = consider(mb, r, f"{label} + ComfyUI {sch}")
        rows[b] = (fb, mb, bb)
        log(f"  cfg {case.cfg:g} NFE {b}: FewStep {fb[0]:.3e} {fb[1]} | FewStep solver + ComfyUI scheduler "
            f"{mb[0]:.3e} {mb[1]} | ComfyUI {bb[0]:.3e} {bb[1]}", flush=True)
    return rows


def cmd_solvers(ref, args, log=print):
    from solvers import ratio_interval
    labels = all_labels(args.seeds)
    floor = ref.floor(labels)
    lines = ["| cfg | NFE | FewStep best (solver + schedule) | error | acc. / Fréchet | ComfyUI best (sampler + scheduler) "
             "| error | acc. / Fréchet | FewStep / ComfyUI | 90% seed interval |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes, worst = [], 0.0
    for cfg in args.cfg:
        case = Case(ref, labels, cfg)
        t = time.time()
        conv = case.converged()
        half = case.converged(REF_STEPS // 2)
        conv_err = float((half - conv).norm() / conv.norm())
        conv_score = ref.score(conv, labels)
        log(f"cfg {cfg:g}: converged sample ({REF_STEPS} RK4 steps) in {time.time() - t:.0f} s; "
            f"{REF_STEPS // 2} vs {REF_STEPS} steps differ by {conv_err:.1e}; its accuracy / Fréchet "
            f"{_fmt_score(conv_score)} (data {floor:.3g})", flush=True)
        notes.append(f"cfg {cfg:g}: the converged sample's own error (RK4 {REF_STEPS // 2} vs {REF_STEPS} steps) is "
                     f"{conv_err:.1e}; it scores {_fmt_score(conv_score)} (accuracy / Fréchet).")
        rows = grid(case, BUDGETS, args.quick, log=log)
        for b in BUDGETS:
            fb, mb, bb = rows[b]
            best = fb if fb[0] <= mb[0] else mb
            ratio = best[0] / bb[0] if bb[0] > 0 else math.inf
            worst = max(worst, ratio)
            lo, hi = ratio_interval(best[2], bb[2])
            fs = _fmt_score(ref.score(best[3], labels)) if best[3] is not None else "-"
            cs_ = _fmt_score(ref.score(bb[3], labels)) if bb[3] is not None else "-"
            lines.append(f"| {cfg:g} | {b} | {best[1]} | {best[0]:.2e} | {fs} | {bb[1]} | {bb[0]:.2e} | {cs_} "
                         f"| {ratio:.2f} | {lo:.2f}–{hi:.2f} |")
    text = "\n".join(lines)
    summary = (f"\nWorst FewStep / ComfyUI ratio: {worst:.2f}. {args.seeds} noise seeds (labels i % 10), "
               f"data Fréchet at this N {floor:.3g}. " + " ".join(notes))
    return text + "\n" + summary


# ------------------------------------------------------------------------------------------------
def flops_of(case, sampler, sigmas):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        err, calls = case.run(sampler, sigmas)
    return err, calls, fc.get_total_flops()


def cmd_patches(ref, args, log=print):
    import comfy.samplers as cs
    host = ref.host
    labels = all_labels(args.seeds)
    cfg = args.cfg[0]
    S = args.steps
    base = Case(ref, labels, cfg)
    base.converged()
    sampler = lambda: cs.sampler_object("dpmpp_2m")  # noqa: E731
    sig = lambda n: cs.calculate_sigmas(ref.ms, "karras", n).cpu()  # noqa: E731
    # the unpatched model at every step count: the fewer-steps baseline
    plain = {}
    for n in range(1, S + 1):
        err, calls, fl = flops_of(base, sampler(), sig(n))
        plain[n] = (err, fl, ref.score(base.last_out, labels))
    log(f"unpatched {S} steps: error {plain[S][0]:.3e}, {plain[S][1] / 1e9:.2f} GFLOP", flush=True)
    dc, tg = host.NODES["FewStepDeepCache"](), host.NODES["FewStepTGate"]()
    configs = [(f"DeepCache N={n}", lambda n=n: dc.patch(ref.patcher, n, 0, "uniform", 0.0, 1.0)[0]) for n in (2, 3, 5)]
    configs += [("T-GATE gate 40%", lambda: tg.patch(ref.patcher, 0.4, False)[0]),
                ("DeepCache N=3 + T-GATE 40%", lambda: tg.patch(dc.patch(ref.patcher, 3, 0, "uniform", 0.0, 1.0)[0], 0.4, False)[0])]
    lines = [f"| configuration ({S} steps dpmpp_2m + karras) | UNet GFLOP | error | acc. / Fréchet | fewer steps at ≤ the same FLOPs "
             "| its error | its acc. / Fréchet | patch beats fewer steps (error)? |", "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| unpatched | {plain[S][1] / 1e9:.2f} | {plain[S][0]:.2e} | {_fmt_score(plain[S][2])} | – | – | – | – |")
    verdicts = []
    for name, make in configs:
        case = Case(ref, labels, cfg, model=make())
        case._ref = base._ref
        err, calls, fl = flops_of(case, sampler(), sig(S))
        sc = ref.score(case.last_out, labels)
        fit = [n for n in plain if plain[n][1] <= fl * (1 + 1e-9)]
        m = max(fit) if fit else None
        if m is None:  # cheaper than one unpatched step
            lines.append(f"| {name} | {fl / 1e9:.2f} | {err:.2e} | {_fmt_score(sc)} | (cheaper than 1 step) | – | – | yes |")
            verdicts.append((name, True, 0.0))
            continue
        wins = err < plain[m][0]
        verdicts.append((name, wins, err / plain[m][0]))
        lines.append(f"| {name} | {fl / 1e9:.2f} | {err:.2e} | {_fmt_score(sc)} | {m} steps ({plain[m][1] / 1e9:.2f}) "
                     f"| {plain[m][0]:.2e} | {_fmt_score(plain[m][2])} | {'yes' if wins else 'no'} ({err / plain[m][0]:.2f}×) |")
        log(f"{name}: {fl / 1e9:.2f} GFLOP, error {err:.3e} vs {m} plain steps {plain[m][0]:.3e}", flush=True)
    held = [v[0] for v in verdicts if v[1]]
    failed = [v[0] for v in verdicts if not v[1]]
    summary = (f"\ncfg {cfg:g}, {args.seeds} noise seeds. DeepCache's claim (beats fewer steps at equal compute) "
               f"holds here for: {', '.join(held) or 'none'}; does not hold for: {', '.join(failed) or 'none'}. "
               f"Error = distance to the converged sample of the unpatched model.")
    return "\n".join(lines) + "\n" + summary


def cmd_freeu(ref, args, log=print):
    import comfy.samplers as cs
    from fewstep.patches.freeu import PRESETS
    fu = ref.host.NODES["FewStepFreeU"]()
    labels = all_labels(args.seeds)
    floor = ref.floor(labels)
    preset = "SD1.5"
    b1, b2, s1, s2 = PRESETS[preset]
    lines = [f"| cfg | configuration ({args.steps} steps dpmpp_2m + karras) | accuracy | Fréchet | distance to the unpatched sample |",
             "|---|---|---|---|---|"]
    for cfg in args.cfg:
        outs = {}
        for name, model in (("unpatched", ref.patcher),
                            (f"FreeU v1 ({preset} preset)", fu.patch(ref.patcher, 1, b1, b2, s1, s2, 0.0, 1.0, "custom")[0]),
                            (f"FreeU v2 ({preset} preset)", fu.patch(ref.patcher, 2, b1, b2, s1, s2, 0.0, 1.0, "custom")[0])):
            case = Case(ref, labels, cfg, model=model)
            out = case.sample(cs.sampler_object("dpmpp_2m"), cs.calculate_sigmas(ref.ms, "karras", args.steps).cpu())
            outs[name] = out
            s = ref.score(out, labels)
            d = float((out - outs["unpatched"]).norm() / outs["unpatched"].norm())
            lines.append(f"| {cfg:g} | {name} | {100 * s['accuracy']:.1f}% | {s['frechet']:.3g} | {d:.3f} |")
            log(f"cfg {cfg:g} {name}: {_fmt_score(s)}", flush=True)
    return "\n".join(lines) + f"\n\n{args.seeds} samples (labels i % 10); data images at this N score Fréchet {floor:.3g}."


# ------------------------------------------------------------------------------------------------
def _temp_models(kind):
    import folder_paths
    d = tempfile.mkdtemp(prefix=f"fewstep-bench-{kind}-")
    folder_paths.folder_names_and_paths[kind] = ([d], {".safetensors"})
    return d


def cmd_fitted(ref, args, log=print):
    cfg = args.cfg[0]
    fit_labels = all_labels(args.fit_samples, classes=range(5))
    ev_labels = all_labels(args.seeds, classes=range(5, 10))
    ev = Case(ref, ev_labels, cfg)
    ev.converged()
    _temp_models("fewstep_olss")
    _temp_models("fewstep_ays")
    pos, neg = ref.conds(fit_labels)
    latent = {"samples": torch.zeros(len(fit_labels), 4, 8, 8)}
    lines = ["| method (fitted on classes 0-4, seed 99; evaluated on classes 5-9, other seeds) | NFE | error | acc. / Fréchet "
             "| best fixed solver + schedule at this NFE | its error | ratio |", "|---|---|---|---|---|---|---|"]
    fixed = grid(ev, [s for s in args.nfe], args.quick, log=log)
    for nfe in args.nfe:
        fb, mb, bb = fixed[nfe]
        best = min((fb, mb, bb), key=lambda r: r[0])
        if "olss" in args.methods:
            lines.append(_fitted_olss(ref, args, ev, ev_labels, pos, neg, latent, cfg, nfe, best, log))
        if "ays" in args.methods:
            lines.append(_fitted_ays(ref, args, ev, ev_labels, pos, neg, latent, cfg, nfe, log))
    return "\n".join(lines) + (f"\n\ncfg {cfg:g}; fitting batch {len(fit_labels)} (OLSS: {args.olss_runs} teacher runs over it; "
                                f"AYS: {args.ays_samples} teacher samples), {args.seeds} evaluation seeds.")


def _fitted_olss(ref, args, ev, ev_labels, pos, neg, latent, cfg, nfe, best, log):
    """The OLSS row of the fitted table: trained on the fitting batch, evaluated on the other classes."""
    host = ref.host
    t = time.time()
    olss = host.NODES["FewStepOLSSTrain"]()
    res = olss.train(ref.patcher, pos, neg, latent, cfg, "deis_3", args.teacher_steps, "karras", nfe,
                     args.olss_runs, FIT_SEED, True, f"bench_olss_{nfe}", 0.0, False, True, 2)
    res = res["result"] if isinstance(res, dict) else res
    profile = res[0]
    from fewstep.nodes.olss import LINKED
    sampler, sigmas = host.NODES["FewStepOLSSSampler"]().build(LINKED, 1.0, profile=profile)
    err, calls = ev.run(sampler, sigmas)
    sc = ref.score(ev.last_out, ev_labels)
    log(f"OLSS NFE {nfe}: {err:.3e} ({calls} calls; fit {time.time() - t:.0f} s) vs fixed {best[0]:.3e}", flush=True)
    return (f"| OLSS (teacher deis_3, {args.teacher_steps} steps) | {calls} | {err:.2e} | {_fmt_score(sc)} | "
            f"{best[1]} | {best[0]:.2e} | {err / best[0]:.2f} |")


def _fitted_ays(ref, args, ev, ev_labels, pos, neg, latent, cfg, nfe, log):
    """The AYS row: the optimised schedule aligned to dpmpp_2m, against dpmpp_2m's best fixed schedule."""
    import comfy.samplers as cs
    host = ref.host
    t = time.time()
    ays = host.NODES["FewStepAYSOptimize"]()
    out = ays.optimize(ref.patcher, pos, neg, cfg, nfe, args.ays_iterations, args.ays_samples, FIT_SEED,
                       f"bench_ays_{nfe}", latent, "KSampler: dpmpp_2m")
    sig = (out["result"] if isinstance(out, dict) else out)[0]
    err, calls = ev.run(cs.sampler_object("dpmpp_2m"), sig.cpu())
    sc = ref.score(ev.last_out, ev_labels)
    best2 = (math.inf, None)
    for sch in (QUICK["builtin_schedulers"] if args.quick else BUILTIN_SCHEDULERS):
        e2, c2 = ev.run(cs.sampler_object("dpmpp_2m"), cs.calculate_sigmas(ref.ms, sch, nfe).cpu())
        if e2 < best2[0]:
            best2 = (e2, f"dpmpp_2m + {sch}")
    sched_node = host.NODES["FewStepScheduler"]()
    for sch, rho in FEWSTEP_SCHEDULES if not args.quick else FEWSTEP_SCHEDULES[:1]:
        e2, c2 = ev.run(cs.sampler_object("dpmpp_2m"), sched_node.get_sigmas(ev.patcher, sch, nfe, 1.0, rho)[0])
        if e2 < best2[0]:
            best2 = (e2, f"dpmpp_2m + FewStep {sch}")
    log(f"AYS NFE {nfe}: {err:.3e} (fit {time.time() - t:.0f} s) vs dpmpp_2m's best fixed {best2[0]:.3e}", flush=True)
    return (f"| AYS optimised schedule with dpmpp_2m ({args.ays_iterations} iterations) | {calls} | {err:.2e} | "
            f"{_fmt_score(sc)} | {best2[1]} | {best2[0]:.2e} | {err / best2[0]:.2f} |")


# ------------------------------------------------------------------------------------------------
def _tile(images, cols, scale=3, pad=2):
    """(N, H, W, 3) in [0, 1] -> one PIL image, ``cols`` per row, each image scaled by ``scale``."""
    from PIL import Image
    n, h, w, _ = images.shape
    rows = math.ceil(n / cols)
    H, W = h * scale + pad, w * scale + pad
    sheet = Image.new("RGB", (cols * W + pad, rows * H + pad), (40, 40, 40))
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for i in range(n):
        im = Image.fromarray(arr[i]).resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(im, (pad + (i % cols) * W, pad + (i // cols) * H))
    return sheet


def cmd_samples(ref, args, log=print):
    """docs/img/reference_samples.png (every class x 8 seeds, 20 steps dpmpp_2m + karras) and
    docs/img/reference_nfe.png (the same noise at NFE 5 / 10 / 20 with ComfyUI's dpmpp_2m + karras
    and with FewStep's best entry of the solvers table)."""
    import comfy.samplers as cs
    cfg = args.cfg[0]
    cols = 8
    labels = torch.arange(10).repeat_interleave(cols)
    case = Case(ref, labels, cfg, noise_seed=NOISE_SEED + 1)
    out = case.sample(cs.sampler_object("dpmpp_2m"), cs.calculate_sigmas(ref.ms, "karras", args.steps).cpu())
    with torch.inference_mode():
        imgs = ref.vae.decode(out)
    s = ref.score(out, labels)
    img_dir = REPO / "docs" / "img"
    if not args.no_write:
        _tile(imgs, cols).save(img_dir / "reference_samples.png")
    lines = [f"docs/img/reference_samples.png: one row per class ({', '.join(ref.quality.data.CLASS_NAMES)}), "
             f"{cols} seeds each, {args.steps} steps dpmpp_2m + karras, cfg {cfg:g}: accuracy "
             f"{100 * s['accuracy']:.0f}%, Fréchet {s['frechet']:.3g}."]
    few = torch.arange(10)
    case = Case(ref, few, cfg, noise_seed=NOISE_SEED + 2)
    host = ref.host
    unipc = lambda: host.NODES["FewStepUniPC"]().get_sampler(variant="bh1", order=3, corrector=True,  # noqa: E731
                                                             lower_order_final=True)[0]
    sched = host.NODES["FewStepScheduler"]()
    rows = []
    for nfe in (5, 10, 20):
        a = case.sample(cs.sampler_object("dpmpp_2m"), cs.calculate_sigmas(ref.ms, "karras", nfe).cpu())
        b = case.sample(unipc(), sched.get_sigmas(case.patcher, "logsnr_uniform", nfe, 1.0, 7.0)[0])
        rows += [a, b]
    with torch.inference_mode():
        sheet = torch.cat([ref.vae.decode(r) for r in rows])
    if not args.no_write:
        _tile(sheet, 10).save(img_dir / "reference_nfe.png")
    lines.append("docs/img/reference_nfe.png: the same 10 noises (one per class), rows in pairs at NFE 5, 10, 20: "
                 "ComfyUI dpmpp_2m + karras, then FewStep UniPC (bh1, order 3) + logSNR-uniform.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
def cmd_gate(ref, args, log=print):
    """Issue 16's gate as a user runs it: FewStep Reference Model (all classes, batch 64) -> ComfyUI's
    KSampler (S steps, dpmpp_2m, karras) -> VAE Decode -> FewStep Quality, per cfg and noise seed."""
    import nodes as comfy_nodes
    rows = ["| cfg | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | mean |", "|---" * (args.seeds + 2) + "|"]
    for cfg in args.cfg:
        accs = []
        for seed in range(args.seeds):
            model, pos, neg, vae, latent = ref.node.FewStepReferenceModel().load(
                "unet_eps", ref.quality.ALL_CLASSES, 64)["result"]
            (s,) = comfy_nodes.KSampler().sample(model, seed, args.steps, cfg, "dpmpp_2m", "karras", pos, neg, latent)
            (img,) = comfy_nodes.VAEDecode().decode(vae, s)
            report, acc, fd = ref.node.FewStepQuality().score(img, ref.quality.ALL_CLASSES)["result"]
            log(f"cfg {cfg:g} seed {seed}: {report}")
            accs.append(acc)
        rows.append(f"| {cfg:g} | " + " | ".join(f"{100 * a:.1f}%" for a in accs) + f" | {100 * sum(accs) / len(accs):.1f}% |")
    return ("\n".join(rows) + f"\n\nClass accuracy of 64 images (labels i % 10), {args.steps} steps dpmpp_2m + karras, "
            "KSampler seed per column; the issue's gate is 90%.")


COMMANDS = {"gate": cmd_gate, "samples": cmd_samples, "solvers": cmd_solvers, "patches": cmd_patches, "freeu": cmd_freeu, "fitted": cmd_fitted}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=sorted(COMMANDS))
    ap.add_argument("--seeds", type=int, default=None, help="evaluation noise seeds (batch size)")
    ap.add_argument("--cfg", type=float, nargs="+", default=[DEFAULT_CFG], help=f"cfg value(s) (default {DEFAULT_CFG:g})")
    ap.add_argument("--steps", type=int, default=20, help="patches/freeu: sampling steps (default 20)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10], help="fitted: NFE budgets (default 5 10)")
    ap.add_argument("--methods", nargs="+", choices=("olss", "ays"), default=["olss", "ays"],
                    help="fitted: which fitted methods to run (default both; the AYS optimiser takes over 20 min a "
                         "case on a 2-core CPU)")
    ap.add_argument("--fit-samples", type=int, default=16, help="fitted: fitting samples (default 16)")
    ap.add_argument("--teacher-steps", type=int, default=60, help="fitted: OLSS teacher steps (default 60)")
    ap.add_argument("--ays-iterations", type=int, default=1, help="fitted: AYS optimiser iterations (default 1)")
    ap.add_argument("--ays-samples", type=int, default=32, help="fitted: AYS teacher samples (default 32, the least align_to takes)")
    ap.add_argument("--olss-runs", type=int, default=2, help="fitted: OLSS teacher runs over the fitting batch (default 2)")
    ap.add_argument("--weights", type=Path, default=None, help="folder of the weight files (default reference/weights)")
    ap.add_argument("--quick", action="store_true", help="a small grid (the script's smoke test)")
    ap.add_argument("--no-write", action="store_true", help=f"print only; do not update docs/{PAGE}")
    args = ap.parse_args(argv)
    if args.seeds is None:
        args.seeds = {"gate": 2, "solvers": 32, "patches": 32, "freeu": 200, "fitted": 32, "samples": 80}[args.command]
    if args.seeds < 2 or args.steps < 2:
        ap.error("--seeds and --steps must be >= 2")
    if args.quick:  # the smoke test: every code path, tiny sizes
        global REF_STEPS
        REF_STEPS = 8
        args.steps, args.teacher_steps, args.nfe = min(args.steps, 4), 20, [5]
        args.fit_samples, args.ays_iterations, args.olss_runs = min(args.fit_samples, 4), 1, 1
        args.ays_samples = 32
    torch.set_num_threads(int(os.environ.get("FEWSTEP_BENCH_THREADS", "1")))
    t0 = time.time()
    ref = Reference(args.weights)
    text = COMMANDS[args.command](ref, args)
    text += f" {time.time() - t0:.0f} s on {torch.get_num_threads()} CPU thread(s)."
    print(text)
    if not args.no_write and not args.quick:
        cmd = " ".join(["python bench/reference.py"] + list(sys.argv[1:] if argv is None else argv))
        write_block(PAGE, f"Produced by `{cmd}`:\n\n" + text, f"<!-- bench:reference-{args.command}:start -->",
                    f"<!-- bench:reference-{args.command}:end -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
