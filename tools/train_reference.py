#!/usr/bin/env python
"""Train FewStep's reference model from a seed: autoencoder -> classifier -> UNet (eps, SD1.5
layout, in ComfyUI's own classes), and write its three weight files.

    python tools/train_reference.py --threads 1 --unet-threads 2   # the shipped files: reference/weights/
    python tools/train_reference.py --quick --out /tmp/ref   # a smoke run (~ a few hundred steps)
    options: --seed 0  --threads 2  --unet-threads N  --out DIR  --quick | --smoke-test  --stages DIR

``--stages DIR`` keeps each stage's result (autoencoder, classifier + statistics, UNet) in DIR as
it finishes and, on a rerun with the same seed, budget and threads, reuses what is there instead of
training it again (every stage is seeded on its own, so the files are the same either way).

ComfyUI is found as the host tests find it ($COMFYUI_PATH, an enclosing ComfyUI, ~/comfy/ComfyUI;
see tests/comfy_host.py), else the source snapshot ``shared/comfyui`` next to the repository is
copied to a temporary folder; it is imported in-process in CPU mode.

Stages (every batch from its own seeded generator; ``torch.use_deterministic_algorithms``; a fixed
thread count, so a rerun with the same seed, threads and versions writes the same tensors):

1. ``ae``: ComfyUI's ``AutoencoderKL`` (reference/autoencoder.py), 32x32x3 -> 4x8x8, on fresh
   procedural batches: MSE + 0.5 L1 on pixels, KL to N(0, 1) of the posterior (weight 1e-4,
   the posterior sampled as SD's VAE is trained). Then the per-channel mean/std of the posterior
   mean on held-out images is folded into ``quant_conv``/``post_quant_conv`` so that ComfyUI's SD1.5
   latent scale (0.18215) gives the UNet unit-variance latents.
2. ``clf``: the classifier (reference/classifier.py) on fresh batches, half of each batch replaced
   by its reconstruction through the (fp16-rounded) autoencoder (``CLF_RECON_SHARE``), so it reads
   decoded images -- what FewStep Quality scores -- as well as data (held out: 99.5% on data and
   97.9% on reconstructions; trained on data alone it read 99.9% and 95.0%). Then the mean and
   covariance of its penultimate features over held-out data, per class and over all classes (for
   the Fréchet distance), are stored with it.
3. ``bank``: a fixed set of procedural images encoded once by the (fp16-rounded) autoencoder.
4. ``unet``: ``comfy.supported_models.SD15(spec.UNET_CONFIG)`` -> ``BaseModel`` (eps, SD1's
   discrete schedule): the plain eps-MSE of SD at uniform integer timesteps (``MIN_SNR_GAMMA``
   None; min-SNR-5 weighting, tried on 2026-12-02, starved the low-noise steps: its model lost 7
   points of class accuracy denoising from sigma 0.07), on bank latents, class tokens learned with
   the UNet at 10x its learning rate, the null tokens in place of the class for ``p_uncond`` of the
   samples (CFG), AdamW with warm-up and cosine decay, gradient clipping, EMA of the weights with
   warm-up (the EMA is shipped). The attention is ComfyUI's, through its
   ``optimized_attention_override`` hook, written out (``_math_attention``: the same function).
5. ``eval``: the shipped (fp16-rounded) files loaded back through ComfyUI (``comfy.sd.VAE``,
   ``BaseModel``), ``comfy.sample.sample`` with dpmpp_2m + karras, VAE decode, classifier: class
   accuracy and Fréchet distance per cfg; stored in the metadata and printed.

The shipped files were written by ``python tools/train_reference.py --threads 1 --unet-threads 2``
(seed 0; the thread counts are part of what reproduces the tensors). Measured wall time of that
run, on the 2-vCPU machine with nothing else on the UNet's two threads (2026-12-02): ae 955 s and
clf 564 s (one thread), bank 60 s, unet 2470 s (7000 steps, 0.35 s/it with two threads), eval 21 s:
68 min in all, inside the 90-minute budget. Per-iteration costs, batch 64 unless said:
    ae    batch 32   0.27..0.38 s/it (1 thread)  x 2500
    clf              0.15..0.28 s/it (1 thread)  x 2000  (the reconstructions add ~0.1 s/it)
    unet             0.43..0.52 s/it (1 thread), 0.27..0.35 (2 threads, free cores)  x 7000
    bank  40960 images rendered + encoded, 1.5-2.5 s per 1024
The two vCPUs share a core: a second job on the machine slows a step ~1.7x, and two threads then
wait on each other (2.4 s/it seen); run it alone, or with ``--threads 1``. The UNet budget was
2500 steps in the first shipped version; 7000 steps with the plain eps loss took the class
accuracy of its samples (cfg 5) from 30% to 42% with the first classifier. NOMINAL holds the
per-iteration figures the ETA starts from; every progress line replaces them with measured rates.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BUDGETS = {
    "full": dict(ae_steps=2500, ae_batch=32, ae_lr=1e-3, clf_steps=2000, clf_batch=64, clf_lr=2e-3,
                 stats_n=10000, bank=40960, unet_steps=7000, unet_batch=64, unet_lr=8e-4, ema=0.999,
                 eval_per_class=10, eval_steps=20, eval_cfgs=(1.0, 3.0, 5.0), heldout=2000),
    "quick": dict(ae_steps=60, ae_batch=32, ae_lr=1e-3, clf_steps=60, clf_batch=64, clf_lr=2e-3,
                  stats_n=1000, bank=2048, unet_steps=60, unet_batch=64, unet_lr=8e-4, ema=0.99,
                  eval_per_class=2, eval_steps=20, eval_cfgs=(1.0, 3.0), heldout=500),
    "smoke": dict(ae_steps=3, ae_batch=8, ae_lr=1e-3, clf_steps=3, clf_batch=16, clf_lr=2e-3,
                  stats_n=200, bank=64, unet_steps=3, unet_batch=16, unet_lr=8e-4, ema=0.9,
                  eval_per_class=1, eval_steps=2, eval_cfgs=(3.0,), heldout=100),
}
#: planned wall seconds per iteration on 2 uncontended cores (for the ETA before a stage has run);
#: "bank" and "eval" count one iteration per 1024 images / per sampled image
NOMINAL = {"ae": 0.25, "clf": 0.12, "bank": 2.5, "unet": 0.45, "eval": 0.1}
P_UNCOND = 0.15
KL_WEIGHT = 1e-4
CLF_RECON_SHARE = 0.5  # share of each classifier batch replaced by its AE reconstruction (see train_classifier)
MIN_SNR_GAMMA = None  # UNet loss weighting: None = the plain eps MSE of SD (see train_unet)
TOKEN_LR_MULT = 10.0  # the class tokens learn 10x faster than the UNet


# ------------------------------------------------------------------------------------------------
def _snapshot_candidates():
    return [REPO.parent / "shared" / "comfyui", REPO.parent.parent / "shared" / "comfyui"]


def import_comfy():
    """ComfyUI imported in CPU mode with FewStep (this checkout) on the path; returns comfy_host's
    namespace."""
    holder = tempfile.mkdtemp(prefix="fewstep-train-path-")
    os.symlink(REPO, os.path.join(holder, "fewstep"), target_is_directory=True)
    sys.path.insert(0, holder)
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import comfy_host

    path = comfy_host.find_comfyui()
    if path is None:
        snap = next((p for p in _snapshot_candidates() if comfy_host._is_comfyui(p)), None)
        if snap is None:
            raise SystemExit("train_reference: no ComfyUI found ($COMFYUI_PATH, an enclosing ComfyUI, "
                             "~/comfy/ComfyUI, or the snapshot shared/comfyui next to the repository)")
        dst = Path(tempfile.mkdtemp(prefix="fewstep-train-comfy-")) / "ComfyUI"
        shutil.copytree(snap, dst)
        for root, dirs, files in os.walk(dst):
            for n in dirs + files:
                p = os.path.join(root, n)
                os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
        path = dst
        print(f"train_reference: using a copy of the ComfyUI snapshot {snap} at {dst}", flush=True)
    return comfy_host.import_comfyui(path)


def _versions(host) -> dict:
    import numpy
    import safetensors
    import torch

    import fewstep
    v = {"torch": torch.__version__, "numpy": numpy.__version__, "safetensors": safetensors.__version__,
         "python": platform.python_version(), "fewstep": fewstep.__version__}
    try:
        sys.path.insert(0, str(host.path))
        import comfyui_version
        v["comfyui"] = comfyui_version.__version__
    except ImportError:
        v["comfyui"] = "unknown"
    return v


def _fp16(sd: dict) -> dict:
    import torch
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous() for k, v in sd.items()}


def _fp32(sd: dict) -> dict:
    import torch
    return {k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in sd.items()}


class Stages:
    """Each stage's output kept in a folder (``--stages``), reused by a rerun of the same settings."""

    #: the budget settings each stage's result depends on (with the seed and the thread count); the
    #: UNet depends on everything before it as well
    DEPENDS = {"ae": ("ae_steps", "ae_batch", "ae_lr", "stats_n"),
               "clf": ("clf_steps", "clf_batch", "clf_lr") + (("ae_steps", "ae_batch", "ae_lr", "stats_n")
                                                             if CLF_RECON_SHARE else ())}

    def __init__(self, folder, seed: int, threads: int, budget: dict, unet_threads: int | None = None):
        self.folder = Path(folder) if folder else None
        self.seed, self.threads, self.budget = seed, threads, budget
        self.unet_threads = threads if unet_threads is None else unet_threads
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def key(self, name) -> str:
        keys = self.DEPENDS.get(name)
        b = self.budget if keys is None else {k: self.budget[k] for k in keys}
        threads = self.threads if keys is not None else [self.threads, self.unet_threads]
        if keys is None:
            extra = {"min_snr_gamma": MIN_SNR_GAMMA, "token_lr_mult": TOKEN_LR_MULT, "ema_warmup": True}
        else:
            extra = {"clf_recon_share": CLF_RECON_SHARE} if name == "clf" and CLF_RECON_SHARE else {}
        return json.dumps({"stage": name, "seed": self.seed, "threads": threads, "budget": b,
                           "p_uncond": P_UNCOND, "kl_weight": KL_WEIGHT, **extra}, sort_keys=True)

    def load(self, name):
        if not self.folder:
            return None
        f, j = self.folder / f"{name}.safetensors", self.folder / f"{name}.json"
        if not (f.is_file() and j.is_file()):
            return None
        info = json.loads(j.read_text())
        if info.get("key") != self.key(name):
            print(f"train_reference: stage {name} in {self.folder} has other settings; training it again", flush=True)
            return None
        from safetensors.torch import load_file
        print(f"train_reference: stage {name} reused from {f}", flush=True)
        return load_file(str(f)), info["extra"]

    def save(self, name, sd, extra):
        if not self.folder:
            return
        from safetensors.torch import save_file
        tmp = self.folder / f".{name}.tmp"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
        os.replace(tmp, self.folder / f"{name}.safetensors")
        (self.folder / f"{name}.json").write_text(json.dumps({"key": self.key(name), "extra": extra}))


# ------------------------------------------------------------------------------------------------
def train_autoencoder(rm, data, training, b, seed, prog):
    import torch
    import torch.nn.functional as F

    ae = rm.build_autoencoder(seed=data._mix(seed, 101))
    ae.train()
    opt = torch.optim.AdamW(ae.parameters(), lr=b["ae_lr"], weight_decay=0.0)
    gen = torch.Generator().manual_seed(data._mix(seed, 102))
    prog.start("ae")
    every = max(1, b["ae_steps"] // 20)
    for step in range(b["ae_steps"]):
        for gr in opt.param_groups:
            gr["lr"] = training.lr_at(step, b["ae_steps"], b["ae_lr"], warmup=max(1, b["ae_steps"] // 20))
        x, _ = data.training_batch(b["ae_batch"], seed, stream=1, step=step)
        moments = ae.quant_conv(ae.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        rec = ae.decode(z)
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1.0 - logvar).mean()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + KL_WEIGHT * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        if (step + 1) % every == 0 or step + 1 == b["ae_steps"]:
            prog.report(step + 1, loss.item(), f"kl {kl.item():.3g}")
    timing = prog.finish()
    ae.eval()
    # latent statistics of the posterior mean on held-out images -> folded normalisation
    from fewstep.reference import autoencoder as ae_spec
    xs, _ = data.make_dataset(min(2048, b["stats_n"] * 2), data._mix(seed, 103))
    with torch.no_grad():
        zs = torch.cat([ae.quant_conv(ae.encoder(xs[i:i + 256])).chunk(2, 1)[0] for i in range(0, len(xs), 256)])
    mean_c = zs.mean(dim=(0, 2, 3)).double()
    std_c = zs.double().std(dim=(0, 2, 3))
    sd = ae_spec.fold_latent_normalisation(ae.state_dict(), mean_c, std_c)
    return _fp16(sd), timing, {"latent_mean": mean_c.tolist(), "latent_std": std_c.tolist()}


def train_classifier(data, clf_mod, training, b, seed, prog, ae=None):
    """``ae``: the shipped (fp16-rounded) autoencoder; ``CLF_RECON_SHARE`` of every batch is then
    replaced by its reconstruction, so the classifier reads decoded images (what FewStep Quality
    scores) as well as it reads the data."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(data._mix(seed, 201))
    clf = clf_mod.Classifier()
    opt = torch.optim.AdamW(clf.parameters(), lr=b["clf_lr"], weight_decay=1e-4)
    prog.start("clf")
    every = max(1, b["clf_steps"] // 10)
    clf.train()
    for step in range(b["clf_steps"]):
        for gr in opt.param_groups:
            gr["lr"] = training.lr_at(step, b["clf_steps"], b["clf_lr"], warmup=max(1, b["clf_steps"] // 20), floor=0.02)
        x, y = data.training_batch(b["clf_batch"], seed, stream=2, step=step)
        if ae is not None and CLF_RECON_SHARE:
            gm = torch.Generator().manual_seed(data._mix(seed, 20_000_000 + step))
            pick = torch.rand(len(x), generator=gm) < CLF_RECON_SHARE
            if pick.any():
                with torch.no_grad():
                    x = x.clone()
                    x[pick] = ae.decode(ae.encode(x[pick])).clamp(-1, 1)
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % every == 0 or step + 1 == b["clf_steps"]:
            prog.report(step + 1, loss.item())
    timing = prog.finish()
    clf.eval()
    return clf, timing


def feature_stats(clf, clf_mod, data, b, seed):
    import numpy as np
    import torch

    xs, ys = data.make_dataset(b["stats_n"], data._mix(seed, 202))
    _, feats = clf_mod.predict(clf, xs)
    mus, covs = [], []
    for k in range(data.NUM_CLASSES):
        mu, cov = clf_mod.gaussian_stats(feats[ys == k])
        mus.append(mu)
        covs.append(cov)
    mu, cov = clf_mod.gaussian_stats(feats)
    mus.append(mu)
    covs.append(cov)
    return torch.from_numpy(np.stack(mus)).float(), torch.from_numpy(np.stack(covs)).float()


def encode_bank(vae_sd, rm, data, b, seed, prog):
    import torch

    from fewstep.reference import autoencoder as ae_spec

    ae = rm.build_autoencoder(seed=0)
    ae.load_state_dict(_fp32(vae_sd))
    ae.eval()
    xs, ys = data.make_dataset(b["bank"], data._mix(seed, 301))
    prog.plan["bank"] = max(1, math.ceil(b["bank"] / 1024))
    prog.start("bank")
    out = torch.empty(len(xs), ae_spec.LATENT_CHANNELS, xs.shape[2] // ae_spec.DOWNSCALE, xs.shape[3] // ae_spec.DOWNSCALE)
    with torch.no_grad():
        for j, i in enumerate(range(0, len(xs), 1024)):
            out[i:i + 1024] = ae.encode(xs[i:i + 1024]) * ae_spec.SD15_SCALE_FACTOR
            prog.report(j + 1)
    timing = prog.finish()
    return out, ys, timing


def _math_attention(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                    skip_output_reshape=False, **kwargs):
    """softmax(q k^T / sqrt(d)) v written out, for training: the same function as ComfyUI's
    attention, ~15% faster per UNet step here than PyTorch's fused CPU kernel on these 64-long
    sequences of 4-wide heads (backward included)."""
    import torch
    if mask is not None or skip_reshape or skip_output_reshape:
        return func(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                    skip_output_reshape=skip_output_reshape, **kwargs)
    b, lq, c = q.shape
    d = c // heads
    q = q.view(b, lq, heads, d).transpose(1, 2)
    k = k.view(b, -1, heads, d).transpose(1, 2)
    v = v.view(b, -1, heads, d).transpose(1, 2)
    w = torch.matmul(q * d ** -0.5, k.transpose(-1, -2)).softmax(dim=-1)
    return torch.matmul(w, v).transpose(1, 2).reshape(b, lq, c)


TRAIN_ATTENTION = {"optimized_attention_override": _math_attention}


def train_unet(rm, spec, data, training, bank, labels, b, seed, prog):
    import torch
    import torch.nn.functional as F

    base = rm.build_base_model(seed=data._mix(seed, 401), device="cpu")
    unet = base.diffusion_model
    unet.train()
    g = torch.Generator().manual_seed(data._mix(seed, 402))
    tokens = torch.nn.Parameter(torch.randn(data.NUM_CLASSES + 1, spec.TOKENS, spec.CONTEXT_DIM, generator=g))
    params = list(unet.parameters()) + [tokens]
    opt = torch.optim.AdamW([{"params": list(unet.parameters()), "mult": 1.0},
                             {"params": [tokens], "mult": TOKEN_LR_MULT}], lr=b["unet_lr"], weight_decay=0.0)
    ema = training.Ema(params, b["ema"])
    sigmas = base.model_sampling.sigmas.detach().double().cpu()
    ac = (1.0 / (1.0 + sigmas ** 2)).float()
    n = bank.shape[0]
    prog.start("unet")
    every = max(1, b["unet_steps"] // 50)
    warm = max(1, min(500, b["unet_steps"] // 20))
    for step in range(b["unet_steps"]):
        for gr in opt.param_groups:
            gr["lr"] = gr["mult"] * training.lr_at(step, b["unet_steps"], b["unet_lr"], warmup=warm, floor=0.1)
        gs = torch.Generator().manual_seed(data._mix(seed, 10_000_000 + step))
        idx = torch.randint(0, n, (b["unet_batch"],), generator=gs)
        x0, lab = bank[idx], labels[idx].clone()
        lab[torch.rand(b["unet_batch"], generator=gs) < P_UNCOND] = spec.NULL_INDEX
        t = torch.randint(0, len(ac), (b["unet_batch"],), generator=gs)
        eps = torch.randn(x0.shape, generator=gs)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = unet(xt, timesteps=t.float(), context=tokens[lab], transformer_options=TRAIN_ATTENTION)
        # SD's plain eps MSE; with MIN_SNR_GAMMA set, min-SNR-gamma weighting (Hang et al. 2023),
        # min(SNR, gamma) / SNR, which starved the low-noise steps of this model (see the docstring)
        per = (pred - eps).pow(2).mean(dim=(1, 2, 3))
        if MIN_SNR_GAMMA is None:
            loss = per.mean()
        else:
            snr = (a / (1 - a)).view(-1)
            loss = (snr.clamp(max=MIN_SNR_GAMMA) / snr * per).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        if (step + 1) % every == 0 or step + 1 == b["unet_steps"]:
            prog.report(step + 1, loss.item())
    timing = prog.finish()
    raw = {spec.UNET_PREFIX + k: v.detach().clone() for k, v in unet.state_dict().items()}
    raw[spec.TOKENS_KEY] = tokens.detach().clone().float()
    ema.copy_to(params)
    sd = {spec.UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    sd = _fp16(sd)
    sd[spec.TOKENS_KEY] = tokens.detach().clone().float()
    return sd, timing, _fp16(raw)


def evaluate(host, rm, spec, data, clf_mod, clf, stats, unet_sd, vae_sd, b, seed, prog):
    """Sample the shipped weights in ComfyUI and score them with the classifier."""
    import torch

    import comfy.sample

    base = rm.build_base_model(_fp32(unet_sd), device="cpu")
    patcher = rm.with_pytorch_attention(rm.make_patcher(base))
    vae = rm.make_vae(_fp32(vae_sd))
    tokens = unet_sd[spec.TOKENS_KEY].float()
    npc = b["eval_per_class"]
    results = {}
    prog.plan["eval"] = npc * data.NUM_CLASSES * len(b["eval_cfgs"])
    prog.start("eval")
    done = 0
    labs = torch.arange(data.NUM_CLASSES).repeat_interleave(npc)
    pos = [[tokens[labs].clone(), {}]]  # one class per sample: a batch-sized cross-attention context
    neg = [[tokens[[spec.NULL_INDEX] * len(labs)].clone(), {}]]
    latent = torch.zeros(len(labs), 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, data._mix(seed, 501) % (2 ** 31))
    for cfg in b["eval_cfgs"]:
        with torch.inference_mode():
            s = comfy.sample.sample(patcher, noise, b["eval_steps"], cfg, "dpmpp_2m", "karras", pos, neg, latent,
                                    disable_pbar=True)
            imgs = vae.decode(s).movedim(-1, 1) * 2 - 1  # VAE gives (N, H, W, 3) in [0, 1]
        done += len(labs)
        pred, feats = clf_mod.predict(clf, imgs)
        acc = float((pred == labs).float().mean())
        if len(feats) > 2:
            mu, cov = clf_mod.gaussian_stats(feats)
            fd = clf_mod.frechet_distance(mu, cov, stats[0][-1].double().numpy(), stats[1][-1].double().numpy())
        else:
            fd = float("nan")
        results[f"cfg{cfg:g}"] = {"accuracy": round(acc, 4), "frechet": round(fd, 4), "samples": len(labs)}
        prog.report(done, extra=f"cfg {cfg:g}: accuracy {acc:.3f}, Fréchet {fd:.3f}")
    timing = prog.finish()
    return results, timing


# ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smoke run: a few hundred iterations in all (< 3 min)")
    g.add_argument("--smoke-test", action="store_true", help="the tests' run: a handful of iterations per stage")
    ap.add_argument("--seed", type=int, default=0, help="the one seed of the run (default 0)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--unet-threads", type=int, default=None,
                    help="threads of the UNet and evaluation stages (default: --threads); recorded in the files")
    ap.add_argument("--stages", type=Path, default=None,
                    help="keep each stage's result here and reuse it on a rerun with the same settings")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default reference/weights for the full run; required for --quick/--smoke-test)")
    args = ap.parse_args(argv)
    name = "quick" if args.quick else "smoke" if args.smoke_test else "full"
    if args.threads < 1 or (args.unet_threads is not None and args.unet_threads < 1):
        ap.error("--threads and --unet-threads must be >= 1")
    if args.unet_threads is None:
        args.unet_threads = args.threads
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if args.out is None:
        if name != "full":
            ap.error("--out is required with --quick/--smoke-test (the shipped weights are written by the full run only)")
        args.out = REPO / "reference" / "weights"
    b = dict(BUDGETS[name])

    import torch
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    t_start, c_start = time.perf_counter(), time.process_time()
    host = import_comfy()
    from fewstep.nodes import _reference_models as rm
    from fewstep.reference import classifier as clf_mod
    from fewstep.reference import data, files, spec, training

    plan = {"ae": b["ae_steps"], "clf": b["clf_steps"], "bank": max(1, math.ceil(b["bank"] / 1024)),
            "unet": b["unet_steps"], "eval": b["eval_per_class"] * data.NUM_CLASSES * len(b["eval_cfgs"])}
    planned = sum(NOMINAL[s] * plan[s] for s in plan)
    print(f"train_reference: budget {name}, seed {args.seed}, {args.threads} threads ({args.unet_threads} from the "
          f"latent bank on) -> {args.out}; planned "
          f"{planned / 60:.1f} min on 2 uncontended cores ({', '.join(f'{s} {plan[s]}' for s in plan)})", flush=True)
    prog = training.Progress(plan, NOMINAL)

    stages = Stages(args.stages, args.seed, args.threads, b, unet_threads=args.unet_threads)
    got = stages.load("ae")
    if got:
        vae_sd, (t_ae, ae_info) = got[0], got[1]
    else:
        vae_sd, t_ae, ae_info = train_autoencoder(rm, data, training, b, args.seed, prog)
        stages.save("ae", vae_sd, [t_ae, ae_info])
    ae = rm.build_autoencoder(seed=0)  # the autoencoder as shipped (fp16-rounded)
    ae.load_state_dict(_fp32(vae_sd))
    ae.eval()
    got = stages.load("clf")
    if got:
        clf, t_clf = clf_mod.Classifier(), got[1]
        clf.load_state_dict(got[0])
        clf.eval()
    else:
        clf, t_clf = train_classifier(data, clf_mod, training, b, args.seed, prog, ae=ae)
        stages.save("clf", clf.state_dict(), t_clf)
    # held-out accuracy on data and on autoencoder reconstructions
    xh, yh = data.make_dataset(b["heldout"], data._mix(args.seed, 203))
    with torch.no_grad():
        rec = torch.cat([ae.decode(ae.encode(xh[i:i + 256])) for i in range(0, len(xh), 256)])
    acc_data = float((clf_mod.predict(clf, xh)[0] == yh).float().mean())
    acc_rec = float((clf_mod.predict(clf, rec.clamp(-1, 1))[0] == yh).float().mean())
    mse_rec = float(((rec.clamp(-1, 1) - xh) ** 2).mean())
    psnr = 10 * math.log10(4.0 / max(mse_rec, 1e-12))
    print(f"held-out: classifier accuracy {acc_data:.4f} on data, {acc_rec:.4f} on AE reconstructions; "
          f"AE PSNR {psnr:.2f} dB", flush=True)
    stats = feature_stats(clf, clf_mod, data, b, args.seed)
    clf_sd = _fp16(clf.state_dict())
    clf_sd[spec.STATS_MU_KEY], clf_sd[spec.STATS_COV_KEY] = stats
    clf.load_state_dict(_fp32({k: v for k, v in clf_sd.items() if not k.startswith("fewstep.")}))

    torch.set_num_threads(args.unet_threads)
    bank, labels, t_bank = encode_bank(vae_sd, rm, data, b, args.seed, prog)
    print(f"latent bank: {tuple(bank.shape)}, mean {bank.mean():.3f}, std {bank.std():.3f}", flush=True)
    got = stages.load("unet")
    if got:
        unet_sd, t_unet = got
    else:
        unet_sd, t_unet, raw_sd = train_unet(rm, spec, data, training, bank, labels, b, args.seed, prog)
        stages.save("unet", unet_sd, t_unet)
        stages.save("unet_raw", raw_sd, t_unet)  # the last weights before the EMA (diagnosis only)
    results, t_eval = evaluate(host, rm, spec, data, clf_mod, clf, stats, unet_sd, vae_sd, b, args.seed, prog)

    meta = {
        "seed": args.seed, "budget": name, "threads": args.threads, "unet_threads": args.unet_threads,
        "budget_settings": b,
        "p_uncond": P_UNCOND, "kl_weight": KL_WEIGHT, "min_snr_gamma": MIN_SNR_GAMMA, "clf_recon_share": CLF_RECON_SHARE,
        "token_lr_mult": TOKEN_LR_MULT, "ema_warmup": True, "versions": _versions(host),
        "data_spec": data.DEFAULT_SPEC.as_dict(), "class_names": list(data.CLASS_NAMES),
        "unet_config": spec.unet_config(), "tokens": spec.TOKENS, "context_dim": spec.CONTEXT_DIM,
        "vae_config": __import__("fewstep.reference.autoencoder", fromlist=["x"]).vae_config(),
        "timings": [t_ae, t_clf, t_bank, t_unet, t_eval],
        "heldout": {"classifier_accuracy": round(acc_data, 4), "classifier_accuracy_on_reconstructions": round(acc_rec, 4),
                    "ae_psnr_db": round(psnr, 3)},
        "ae_latent_stats": ae_info, "eval": results,
        "wall_s": round(time.perf_counter() - t_start, 1), "cpu_s": round(time.process_time() - c_start, 1),
    }
    out = Path(args.out)
    fps = {}
    fps[spec.VAE_FILE] = files.save_weights(out / spec.VAE_FILE, vae_sd, meta)
    fps[spec.CLASSIFIER_FILE] = files.save_weights(out / spec.CLASSIFIER_FILE, clf_sd, meta)
    fps[spec.UNET_FILE] = files.save_weights(out / spec.UNET_FILE, unet_sd, meta)
    sizes = {f: (out / f).stat().st_size for f in spec.FILES}
    summary = {"out": str(out), "fingerprints": fps, "bytes": sizes, "total_mb": round(sum(sizes.values()) / 2 ** 20, 2),
               "timings": meta["timings"], "heldout": meta["heldout"], "eval": results,
               "wall_s": meta["wall_s"], "cpu_s": meta["cpu_s"]}
    print("train_reference: done " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
