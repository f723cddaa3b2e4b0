"""FewStep's procedural image data: labelled shapes, made from a seed, nothing downloaded.

Every image is one shape of one of ``CLASS_NAMES`` on a background, 32x32 RGB, as a float tensor in
**[-1, 1]**, layout ``(N, 3, H, W)`` (what ComfyUI's SD-style VAEs take after ``image * 2 - 1``).
What varies per image (all drawn from the generator):

* shape: position (centre within +-0.3 of the image half-width), scale (radius 0.38..0.62 of the
  half-width, i.e. 6..10 px), rotation (0..2 pi);
* colour: foreground and background in HSV with random hue and saturation; one is light
  (value 0.65..1) and the other dark (0.05..0.4), chosen at random, so the silhouette always shows;
  a linear gradient (up to +-0.12) on the background;
* texture on the shape: plain, stripes (period 5..9 px, in the shape's frame), checker (cells 4..7
  px) or smooth noise (a 5x5 random field upsampled bicubically), mixing the foreground colour
  with a second colour.

Anti-aliasing: every shape is a signed distance function; the coverage of a pixel is
``clamp(0.5 - d / pixel, 0, 1)`` evaluated on a ``supersample``-times finer grid, then the grid is
average-pooled down to 32x32. Stripes and checkers are smooth (a sine and a ``tanh``-sharpened sine
product) and lie well below the Nyquist limit.

``make_batch(labels, generator)`` renders given labels; ``make_dataset(n, seed)`` is the balanced,
seeded dataset (labels ``arange(n) % classes``, shuffled), rendered in fixed chunks so the result
depends only on ``(n, seed, spec)``; ``training_batch(batch, seed, stream, step)`` is the
``step``-th batch of an endless seeded stream (each batch from its own generator, so a run can
resume at any step and reproduce).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

CLASS_NAMES = ("disc", "ring", "square", "triangle", "cross", "star", "hexagon", "bar", "crescent", "heart")
NUM_CLASSES = len(CLASS_NAMES)

TEXTURES = ("plain", "stripes", "checker", "noise")


@dataclass(frozen=True)
class DataSpec:
    size: int = 32
    supersample: int = 2
    centre_range: float = 0.3
    radius_min: float = 0.38
    radius_max: float = 0.62
    version: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_SPEC = DataSpec()
CHUNK = 1024


def label_index(label) -> int:
    """The class index of ``label`` (a class name or an index), or ValueError naming the choices."""
    if isinstance(label, str):
        if label not in CLASS_NAMES:
            raise ValueError(f"label must be one of {', '.join(CLASS_NAMES)}; got {label!r}")
        return CLASS_NAMES.index(label)
    i = int(label)
    if not 0 <= i < NUM_CLASSES:
        raise ValueError(f"label index must be in 0..{NUM_CLASSES - 1}; got {i}")
    return i


# ------------------------------------------------------------------------------------------------
# signed distances in the shape's local frame (radius ~1), at points (x, y); negative inside.
# All closed forms (no per-edge loops): regular polygons and the star by folding the angle into one
# sector, boxes by the usual |q| form, unions by min and the crescent by max(a, -b).
def _box(x, y, hx: float, hy: float):
    qx = x.abs() - hx
    qy = y.abs() - hy
    return torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2) + torch.maximum(qx, qy).clamp(max=0)


def _fold(x, y, n: int, phase: float):
    """(r cos a, r |sin a|) with a the angle from the nearest of n axes at phase + k 2 pi / n."""
    r = torch.sqrt(x * x + y * y)
    w = 2 * math.pi / n
    a = torch.remainder(torch.atan2(y, x) - phase + w / 2, w) - w / 2
    return r * torch.cos(a), r * torch.sin(a).abs()


def _regular_polygon(x, y, n: int, radius: float, phase: float = math.pi / 2):
    """Regular n-gon with circumradius ``radius`` and a vertex at angle ``phase``."""
    qx, qy = _fold(x, y, n, phase + math.pi / n)  # axes through the edge midpoints
    apothem, half = radius * math.cos(math.pi / n), radius * math.sin(math.pi / n)
    corner = torch.sqrt((qx - apothem) ** 2 + (qy - half) ** 2)
    return torch.where(qy > half, corner, qx - apothem)


def _star(x, y, points: int, outer: float, inner: float, phase: float = math.pi / 2):
    qx, qy = _fold(x, y, points, phase)  # axes through the tips
    tx, ty = outer, 0.0
    ix, iy = inner * math.cos(math.pi / points), inner * math.sin(math.pi / points)
    ex, ey = ix - tx, iy - ty
    wx, wy = qx - tx, qy - ty
    t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0)
    d = torch.sqrt((wx - ex * t) ** 2 + (wy - ey * t) ** 2)
    side = ex * wy - ey * wx  # > 0 on the origin's side of the edge tip -> inner vertex
    return torch.where(side > 0, -d, d)


def _disc(x, y, cx: float, cy: float, r: float):
    return torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


def _heart(x, y):
    """A square turned 45 degrees with two discs on its upper sides."""
    s = 0.62
    c, h = math.sqrt(0.5), 0.08
    u, v = c * (x + (y - h)), c * (-x + (y - h))
    body = _box(u, v, s, s)
    k = s * c  # midpoints of the upper sides, radius = half the side
    return torch.minimum(body, torch.minimum(_disc(x, y, -k, h + k, s), _disc(x, y, k, h + k, s)))


def shape_sdf(cls: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed distance of class ``cls`` at local points ``(x, y)``."""
    name = CLASS_NAMES[cls]
    if name == "disc":
        return _disc(x, y, 0.0, 0.0, 0.95)
    if name == "ring":
        return (torch.sqrt(x * x + y * y) - 0.72).abs() - 0.26
    if name == "square":
        return _box(x, y, 0.78, 0.78)
    if name == "triangle":
        return _regular_polygon(x, y, 3, 1.1)
    if name == "cross":
        return torch.minimum(_box(x, y, 1.0, 0.3), _box(x, y, 0.3, 1.0))
    if name == "star":
        return _star(x, y, 5, 1.08, 0.46)
    if name == "hexagon":
        return _regular_polygon(x, y, 6, 0.95)
    if name == "bar":
        return _box(x, y, 1.05, 0.28)
    if name == "crescent":
        return torch.maximum(_disc(x, y, 0.0, 0.0, 0.95), -_disc(x, y, 0.5, 0.0, 0.8))
    if name == "heart":
        return _heart(x, y)
    raise ValueError(f"unknown class index {cls}")


# ------------------------------------------------------------------------------------------------
def _hsv_to_rgb(h, s, v):
    """h, s, v: (N,) in [0, 1] -> (N, 3)."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], -1)
    f = torch.minimum(torch.minimum(k, 4 - k), torch.ones_like(k)).clamp(min=0)
    return v[:, None] - v[:, None] * s[:, None] * f


def _u(g, n, lo, hi):
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64).float()


def make_batch(labels, generator: torch.Generator, spec: DataSpec = DEFAULT_SPEC) -> torch.Tensor:
    """Images ``(N, 3, size, size)`` in [-1, 1] of the given class indices. Every random number is
    drawn from ``generator`` in a fixed order, so the same generator state gives the same images."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be class indices in 0..{NUM_CLASSES - 1}")
    n = labels.numel()
    g = generator
    S = spec.size * spec.supersample
    # per-image parameters, always drawn in this order
    cx = _u(g, n, -spec.centre_range, spec.centre_range)
    cy = _u(g, n, -spec.centre_range, spec.centre_range)
    rad = _u(g, n, spec.radius_min, spec.radius_max)
    rot = _u(g, n, 0.0, 2 * math.pi)
    light_fg = torch.rand(n, generator=g) < 0.5
    h_fg, s_fg = _u(g, n, 0, 1), _u(g, n, 0.25, 1.0)
    h_bg, s_bg = _u(g, n, 0, 1), _u(g, n, 0.1, 0.9)
    v_hi, v_lo = _u(g, n, 0.65, 1.0), _u(g, n, 0.05, 0.4)
    v_fg = torch.where(light_fg, v_hi, v_lo)
    v_bg = torch.where(light_fg, v_lo, v_hi)
    h_2, mix_2 = _u(g, n, 0, 1), _u(g, n, 0.35, 0.7)
    texture = torch.randint(0, len(TEXTURES), (n,), generator=g)
    period = _u(g, n, 0.32, 0.58)
    t_phase = _u(g, n, 0, 2 * math.pi)
    grad_dir = _u(g, n, 0, 2 * math.pi)
    grad_amp = _u(g, n, 0.0, 0.12)
    noise = torch.rand(n, 1, 5, 5, generator=g)

    fg = _hsv_to_rgb(h_fg, s_fg, v_fg)
    bg = _hsv_to_rgb(h_bg, s_bg, v_bg)
    second = _hsv_to_rgb(h_2, s_fg, torch.where(light_fg, v_fg * 0.45, (v_fg + 0.45).clamp(max=1.0)))
    fg2 = fg + (second - fg) * mix_2[:, None]

    # pixel centres of the fine grid in [-1, 1]
    c = (torch.arange(S, dtype=torch.float32) + 0.5) / S * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    gx = xx.reshape(1, -1) - cx[:, None]
    gy = -yy.reshape(1, -1) - cy[:, None]  # y up
    cos, sin = torch.cos(rot)[:, None], torch.sin(rot)[:, None]
    lx = (cos * gx + sin * gy) / rad[:, None]
    ly = (-sin * gx + cos * gy) / rad[:, None]

    d = torch.empty(n, S * S)
    for k in range(NUM_CLASSES):
        idx = (labels == k).nonzero().reshape(-1)
        if idx.numel():
            d[idx] = shape_sdf(k, lx[idx], ly[idx])
    pixel = 2.0 / S
    cover = (0.5 - d * rad[:, None] / pixel).clamp(0.0, 1.0)

    # texture mask m in [0, 1], in the shape's frame (radius units -> image units), per texture group
    m = torch.zeros(n, S * S)
    w = 2 * math.pi / period
    for k, name in enumerate(TEXTURES):
        idx = (texture == k).nonzero().reshape(-1)
        if name == "plain" or not idx.numel():
            continue
        r_, w_, ph_ = rad[idx, None], w[idx, None], t_phase[idx, None]
        ux, uy = lx[idx] * r_, ly[idx] * r_
        if name == "stripes":
            m[idx] = 0.5 + 0.5 * torch.sin(w_ * ux + ph_)
        elif name == "checker":
            m[idx] = 0.5 + 0.5 * torch.tanh(3.0 * torch.sin(w_ * 0.8 * ux + ph_) * torch.sin(w_ * 0.8 * uy))
        else:
            m[idx] = F.interpolate(noise[idx], size=(S, S), mode="bicubic",
                                   align_corners=False).clamp(0, 1).reshape(idx.numel(), -1)

    fg_px = fg[:, :, None] + (fg2 - fg)[:, :, None] * m[:, None, :]  # (n, 3, P)
    ramp = (torch.cos(grad_dir)[:, None] * xx.reshape(1, -1) + torch.sin(grad_dir)[:, None] * yy.reshape(1, -1))
    bg_px = (bg[:, :, None] + (grad_amp[:, None] * ramp)[:, None, :]).clamp(0, 1)
    img = bg_px + (fg_px - bg_px) * cover[:, None, :]
    img = img.reshape(n, 3, S, S)
    if spec.supersample > 1:
        img = F.avg_pool2d(img, spec.supersample)
    return (img * 2 - 1).clamp(-1, 1).contiguous()


def make_dataset(n: int, seed: int, spec: DataSpec = DEFAULT_SPEC):
    """``(images, labels)``: ``n`` images, classes balanced (``arange(n) % classes``, shuffled),
    rendered in chunks of ``CHUNK`` from generators seeded by ``(seed, chunk)``."""
    if n < 1:
        raise ValueError(f"make_dataset: n must be >= 1; got {n}")
    g = torch.Generator().manual_seed(_mix(seed, 0x5EED))
    labels = (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=g)]
    out = torch.empty(n, 3, spec.size, spec.size)
    for c0 in range(0, n, CHUNK):
        gc = torch.Generator().manual_seed(_mix(seed, c0 // CHUNK + 1))
        out[c0:c0 + CHUNK] = make_batch(labels[c0:c0 + CHUNK], gc, spec)
    return out, labels


def training_batch(batch: int, seed: int, stream: int, step: int, spec: DataSpec = DEFAULT_SPEC):
    """``(images, labels)``: the ``step``-th batch of the seeded stream ``stream`` (random labels)."""
    g = torch.Generator().manual_seed(_mix(seed, stream * 1_000_003 + step))
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return make_batch(labels, g, spec), labels


def _mix(seed: int, k: int) -> int:
    """A 63-bit seed from (seed, k) (splitmix64), so nearby seeds give unrelated streams."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(k) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2 ** 64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2 ** 64 - 1)
    return (z ^ (z >> 31)) & (2 ** 63 - 1)
