"""The quality score of the reference model (reference/quality.py) and the shipped weight files,
without ComfyUI: the shipped classifier reads data images as their class, the Fréchet distance
tells data from non-data, and the files are the ones whose fingerprints the repository records."""
import math

import numpy as np
import pytest
import torch

from fewstep.reference import classifier as clf_mod
from fewstep.reference import data, files, quality, spec


@pytest.fixture(scope="module")
def shipped():
    tensors, meta = files.load_weights(spec.WEIGHTS_DIR / spec.CLASSIFIER_FILE,
                                       required=(spec.STATS_MU_KEY, spec.STATS_COV_KEY))
    clf = clf_mod.Classifier()
    clf.load_state_dict({k: v.float() for k, v in tensors.items() if not k.startswith("fewstep.")})
    clf.eval()
    return clf, (tensors[spec.STATS_MU_KEY].float(), tensors[spec.STATS_COV_KEY].float()), meta


def test_shipped_files_are_the_recorded_ones_and_fit_the_size_budget():
    total = 0
    for name in spec.FILES:
        path = spec.WEIGHTS_DIR / name
        _, meta = files.load_weights(path)  # format, every tensor finite, the fingerprint of the tensors
        assert meta["fingerprint"] == spec.SHIPPED_FINGERPRINTS[name], name
        assert meta["budget"] == "full" and meta["seed"] == 0
        total += path.stat().st_size
    assert total <= 25 * 2 ** 20


def test_labels_cycle_over_the_batch_for_all_classes():
    assert quality.labels_for(quality.ALL_CLASSES, 23).tolist() == [i % 10 for i in range(23)]
    assert quality.labels_for("star", 3).tolist() == [data.CLASS_NAMES.index("star")] * 3
    with pytest.raises(ValueError, match="disc"):
        quality.labels_for("dog", 3)


def test_check_images_converts_comfyui_images_and_names_the_problem():
    img = torch.rand(2, 32, 32, 3)
    x = quality.check_images(img, "W")
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[1, 2], img[1, :, :, 2] * 2 - 1)  # channel-last [0, 1] -> [-1, 1]
    with pytest.raises(ValueError, match=r"W: images must be 32x32.*got 64x48"):
        quality.check_images(torch.rand(1, 48, 64, 3), "W")
    with pytest.raises(ValueError, match=r"W: images must be an IMAGE batch"):
        quality.check_images(torch.rand(32, 32, 3), "W")
    bad = img.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quality.check_images(bad, "W")


def test_frechet_uses_the_class_statistics_for_one_class_and_the_pooled_ones_for_many():
    g = torch.Generator().manual_seed(0)
    d = 6
    feats_a = torch.randn(4000, d, generator=g) + 3.0   # "class 0"
    feats_b = torch.randn(4000, d, generator=g) - 3.0   # every other row
    mus, covs = [], []
    for k in range(data.NUM_CLASSES + 1):
        f = feats_a if k == 0 else feats_b
        mu, cov = clf_mod.gaussian_stats(f)
        mus.append(mu)
        covs.append(cov)
    stats = (torch.tensor(np.stack(mus)).float(), torch.tensor(np.stack(covs)).float())
    sample = feats_a[:500]
    # one class -> that class's row: near 0
    assert quality.frechet_to_data(sample, stats, torch.zeros(500, dtype=torch.long)) < 0.2
    # a mixed batch -> the pooled row (here b's): ~|6|^2 per dimension away
    mixed = torch.arange(500) % 10
    assert quality.frechet_to_data(sample, stats, mixed) == pytest.approx(36 * d, rel=0.1)
    assert math.isnan(quality.frechet_to_data(sample[:1], stats, torch.zeros(1, dtype=torch.long)))


def test_shipped_classifier_reads_data_as_its_class(shipped):
    clf, stats, _ = shipped
    x, y = data.make_dataset(400, seed=12345)  # seeds the training never used
    s = quality.score(clf, stats, x, y)
    assert s["accuracy"] >= 0.97
    assert min(s["per_class"].values()) >= 0.85
    wrong = quality.score(clf, stats, x, (y + 1) % 10)
    assert wrong["accuracy"] <= 0.05


def test_frechet_of_data_is_at_its_floor_and_far_below_non_data(shipped):
    clf, stats, _ = shipped
    labels = torch.arange(200) % 10
    floor = quality.data_floor(clf, stats, labels)
    x = data.make_batch(labels, torch.Generator().manual_seed(2024))
    fd_data = quality.score(clf, stats, x, labels)["frechet"]
    # the Fréchet distance of 200 samples scatters with the draw (0.25 vs 0.63 for two draws of data)
    assert fd_data <= 5 * floor
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # the same images, blurred: not data
    noise = torch.rand_like(x) * 2 - 1
    fd_blur = quality.score(clf, stats, blurred, labels)["frechet"]
    fd_noise = quality.score(clf, stats, noise, labels)["frechet"]
    assert fd_blur > 5 * max(fd_data, floor) and fd_noise > 10 * max(fd_data, floor)


def test_report_line_says_accuracy_frechet_floor_and_weakest_class():
    s = {"n": 20, "accuracy": 0.9, "per_class": {"disc": 1.0, "ring": 0.8}, "frechet": 12.345}
    line = quality.report_line(s, 3.21, quality.ALL_CLASSES)
    assert "90.0% (18/20, every class)" in line and "12.3" in line and "3.21" in line and "ring 80%" in line
    s1 = {"n": 1, "accuracy": 1.0, "per_class": {"star": 1.0}, "frechet": math.nan}
    assert "needs at least 2 images" in quality.report_line(s1, math.nan, "star")
