"""The reference model's ComfyUI-free parts: procedural data, latent normalisation folding, the
Fréchet distance, the classifier's shapes, checked weight files, and the package rule."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewstep.core.io import ProfileError
from fewstep.reference import autoencoder, classifier, data, files, spec, training

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# data
def test_dataset_is_deterministic_balanced_and_in_range():
    x1, y1 = data.make_dataset(60, seed=3)
    x2, y2 = data.make_dataset(60, seed=3)
    x3, _ = data.make_dataset(60, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.shape == (60, 3, 32, 32) and x1.dtype == torch.float32
    assert x1.min() >= -1 and x1.max() <= 1
    assert torch.bincount(y1, minlength=data.NUM_CLASSES).tolist() == [6] * data.NUM_CLASSES
    assert len(set(data.CLASS_NAMES)) == data.NUM_CLASSES >= 10


def test_training_batches_are_seeded_per_step():
    a, la = data.training_batch(8, 0, stream=1, step=5)
    b, lb = data.training_batch(8, 0, stream=1, step=5)
    c, _ = data.training_batch(8, 0, stream=1, step=6)
    d, _ = data.training_batch(8, 0, stream=2, step=5)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c) and not torch.equal(a, d)


def _brute_polygon_sdf(vertices, x, y):
    """Signed distance to a polygon from point-segment distances and a crossing test."""
    p = np.stack([x, y], -1)
    d = np.full(len(p), np.inf)
    inside = np.zeros(len(p), bool)
    n = len(vertices)
    for i in range(n):
        a, b = vertices[i], vertices[(i + 1) % n]
        e = b - a
        t = np.clip(((p - a) @ e) / (e @ e), 0, 1)
        d = np.minimum(d, np.linalg.norm(p - a - t[:, None] * e, axis=1))
        cond = (a[1] > p[:, 1]) != (b[1] > p[:, 1])
        xa = a[0] + (p[:, 1] - a[1]) * e[0] / np.where(e[1] == 0, 1, e[1])
        inside ^= cond & (p[:, 0] < xa)
    return np.where(inside, -d, d)


def _regular(n, r, phase=math.pi / 2):
    a = np.arange(n) * 2 * math.pi / n + phase
    return np.stack([r * np.cos(a), r * np.sin(a)], -1)


def _star(points, outer, inner, phase=math.pi / 2):
    a = np.arange(2 * points) * math.pi / points + phase
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], -1)


@pytest.mark.parametrize("name,vertices", [
    ("triangle", _regular(3, 1.1)), ("hexagon", _regular(6, 0.95)), ("star", _star(5, 1.08, 0.46)),
    ("square", np.array([[0.78, 0.78], [-0.78, 0.78], [-0.78, -0.78], [0.78, -0.78]])),
])
def test_closed_form_sdfs_match_brute_force_polygons(name, vertices):
    g = np.random.default_rng(0)
    pts = g.uniform(-1.6, 1.6, size=(4000, 2))
    ref = _brute_polygon_sdf(vertices, pts[:, 0], pts[:, 1])
    got = data.shape_sdf(data.CLASS_NAMES.index(name), torch.tensor(pts[:, 0], dtype=torch.float64),
                         torch.tensor(pts[:, 1], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_shapes_are_where_their_sdfs_say():
    inside = {"disc": (0, 0), "square": (0.7, 0.7), "cross": (0.9, 0.0), "bar": (1.0, 0.0), "ring": (0.72, 0.0),
              "crescent": (-0.8, 0.0), "heart": (0.0, 0.0)}
    outside = {"ring": (0.0, 0.0), "cross": (0.7, 0.7), "bar": (0.0, 0.5), "crescent": (0.4, 0.0), "heart": (0.0, -1.2)}
    for name, (x, y) in inside.items():
        assert data.shape_sdf(data.CLASS_NAMES.index(name), torch.tensor([x]), torch.tensor([y])) < 0, name
    for name, (x, y) in outside.items():
        assert data.shape_sdf(data.CLASS_NAMES.index(name), torch.tensor([x]), torch.tensor([y])) > 0, name


def test_classes_differ_in_silhouette():
    """Same generator state, different labels: the images differ for every pair of classes (the
    colours, placement and texture are the same draws, so only the shape is different)."""
    imgs = []
    for k in range(data.NUM_CLASSES):
        imgs.append(data.make_batch([k], torch.Generator().manual_seed(7)))
    for i in range(data.NUM_CLASSES):
        for j in range(i + 1, data.NUM_CLASSES):
            assert (imgs[i] - imgs[j]).abs().mean() > 0.01, (data.CLASS_NAMES[i], data.CLASS_NAMES[j])


def test_edges_are_antialiased():
    x = data.make_batch([0] * 8, torch.Generator().manual_seed(1))
    levels = torch.unique((x * 127.5).round())
    assert levels.numel() > 50  # a hard-edged, untextured disc on flat colours would have a handful


def test_label_index_errors_name_the_choices():
    assert data.label_index("star") == data.CLASS_NAMES.index("star")
    with pytest.raises(ValueError, match="disc, ring"):
        data.label_index("dog")
    with pytest.raises(ValueError, match="0..9"):
        data.label_index(10)
    with pytest.raises(ValueError, match="class indices"):
        data.make_batch([11], torch.Generator())


# ------------------------------------------------------------------------------------------------
# autoencoder latent normalisation
def test_fold_latent_normalisation_is_exact():
    g = torch.Generator().manual_seed(0)
    sd = {"quant_conv.weight": torch.randn(8, 8, 1, 1, generator=g), "quant_conv.bias": torch.randn(8, generator=g),
          "post_quant_conv.weight": torch.randn(4, 4, 1, 1, generator=g),
          "post_quant_conv.bias": torch.randn(4, generator=g), "decoder.x": torch.randn(3)}
    mean, std = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([2.0, 0.5, 3.0, 1.5])
    new = autoencoder.fold_latent_normalisation(sd, mean, std)
    h = torch.randn(5, 8, 3, 3, generator=g)
    old_m = F.conv2d(h, sd["quant_conv.weight"], sd["quant_conv.bias"])
    new_m = F.conv2d(h, new["quant_conv.weight"], new["quant_conv.bias"])
    k = (std * autoencoder.SD15_SCALE_FACTOR).view(1, -1, 1, 1)
    torch.testing.assert_close(new_m[:, :4], (old_m[:, :4] - mean.view(1, -1, 1, 1)) / k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_m[:, 4:], old_m[:, 4:] - 2 * torch.log(k), rtol=1e-5, atol=1e-5)
    dec_old = F.conv2d(old_m[:, :4], sd["post_quant_conv.weight"], sd["post_quant_conv.bias"])
    dec_new = F.conv2d(new_m[:, :4], new["post_quant_conv.weight"], new["post_quant_conv.bias"])
    torch.testing.assert_close(dec_new, dec_old, rtol=1e-4, atol=1e-4)
    assert torch.equal(new["decoder.x"], sd["decoder.x"])
    with pytest.raises(ValueError, match="std > 0"):
        autoencoder.fold_latent_normalisation(sd, mean, -std)


# ------------------------------------------------------------------------------------------------
# Fréchet distance
def test_frechet_distance_matches_the_2x2_closed_form_for_non_commuting_covariances():
    """In 2-D, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for PSD M, and M = C1^1/2 C2 C1^1/2 has
    tr M = tr(C1 C2), det M = det C1 det C2."""
    c1 = np.array([[2.0, 0.6], [0.6, 0.5]])
    rot = np.array([[math.cos(0.7), -math.sin(0.7)], [math.sin(0.7), math.cos(0.7)]])
    c2 = rot @ np.diag([3.0, 0.2]) @ rot.T
    assert not np.allclose(c1 @ c2, c2 @ c1)
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 0.5])
    tr_sqrt = math.sqrt(np.trace(c1 @ c2) + 2 * math.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert classifier.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert classifier.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_diagonal_identity_and_errors():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu = np.array([1.0, 2.0, 3.0])
    expected = 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert classifier.frechet_distance(mu, np.diag(a), mu + np.array([1.0, 0, 0]), np.diag(b)) == pytest.approx(expected)
    g = np.random.default_rng(0)
    m = g.normal(size=(6, 6))
    c = m @ m.T
    assert abs(classifier.frechet_distance(mu[:1].repeat(6), c, mu[:1].repeat(6), c)) < 1e-9
    with pytest.raises(ValueError, match="shapes"):
        classifier.frechet_distance(mu, np.eye(3), mu[:2], np.eye(2))


def test_gaussian_stats_of_samples_approach_the_truth():
    g = np.random.default_rng(1)
    l = np.array([[1.0, 0.0], [0.8, 0.6]])
    x = g.normal(size=(200000, 2)) @ l.T + np.array([2.0, -1.0])
    mu, cov = classifier.gaussian_stats(torch.tensor(x))
    np.testing.assert_allclose(mu, [2.0, -1.0], atol=0.01)
    np.testing.assert_allclose(cov, l @ l.T, atol=0.01)
    with pytest.raises(ValueError, match="N >= 2"):
        classifier.gaussian_stats(np.zeros((1, 3)))


def test_classifier_shapes():
    torch.manual_seed(0)
    m = classifier.Classifier()
    x, _ = data.make_dataset(5, 0)
    pred, feats = classifier.predict(m, x)
    assert feats.shape == (5, classifier.FEATURES) and pred.shape == (5,)
    assert m(x).shape == (5, data.NUM_CLASSES)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        m.features(torch.zeros(2, 32, 32))


# ------------------------------------------------------------------------------------------------
# files
def test_weight_files_round_trip_and_refuse_corruption(tmp_path):
    t = {"a": torch.randn(4, 3), "b": torch.arange(5)}
    p = tmp_path / spec.VAE_FILE
    fp = files.save_weights(p, t, {"seed": 3})
    got, meta = files.load_weights(p, required=("a",))
    assert torch.equal(got["a"], t["a"]) and meta["seed"] == 3 and meta["fingerprint"] == fp
    assert fp == training.fingerprint(t)
    with pytest.raises(ProfileError, match="missing c"):
        files.load_weights(p, required=("c",))
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0xFF  # flip bits inside the last tensor's data
    p.write_bytes(bytes(raw))
    with pytest.raises(ProfileError, match="fingerprint"):
        files.load_weights(p)
    p.write_bytes(bytes(raw[:len(raw) // 2]))
    with pytest.raises(ProfileError, match="corrupt or truncated"):
        files.load_weights(p)
    with pytest.raises(ProfileError, match="not found"):
        files.load_weights(tmp_path / spec.UNET_FILE)
    with pytest.raises(ValueError, match="not one of"):
        files.save_weights(tmp_path / "x.safetensors", t, {})


def test_fingerprint_sees_dtype_shape_and_values():
    a = {"w": torch.zeros(2, 2)}
    assert training.fingerprint(a) != training.fingerprint({"w": torch.zeros(4)})
    assert training.fingerprint(a) != training.fingerprint({"w": torch.zeros(2, 2, dtype=torch.float16)})
    assert training.fingerprint(a) != training.fingerprint({"w": torch.tensor([[0.0, 0.0], [0.0, 1e-30]])})


def test_lr_schedule_warms_up_and_decays_to_the_floor():
    lrs = [training.lr_at(s, 100, 1.0, warmup=10, floor=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_reference_package_imports_no_comfyui():
    bad = []
    for f in (REPO / "reference").glob("*.py"):
        for ln in f.read_text().splitlines():
            if re.match(r"\s*(import|from)\s+(comfy|comfy_extras|folder_paths|nodes|server|execution)\b", ln):
                bad.append(f"{f.name}: {ln.strip()}")
    assert not bad, bad


def test_gitignore_ships_the_reference_weights():
    lines = (REPO / ".gitignore").read_text().splitlines()
    assert "*.safetensors" in lines and "!reference/weights/*.safetensors" in lines


def test_ema_warms_up_and_forgets_the_initial_weights():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = training.Ema([p], decay=0.999)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()  # decay of the first update: min(0.999, 1/10)
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.9))
    kept = 0.1  # the share of the initial zeros still in the shadow
    for k in range(1, 2500):
        ema.update()
        kept *= min(0.999, (1 + k) / (10 + k))
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 1.0 - kept))
    assert kept < 0.01  # a plain 0.999 EMA would keep 0.999 ** 2500 = 8% of them
    ema.copy_to([p])
    torch.testing.assert_close(p.detach(), torch.full((3,), 1.0 - kept))
