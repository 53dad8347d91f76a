"""``AnomalyDetector``: percentiles and thresholds come from the validation normals alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oct_vae.training.trainer import TrainConfig
from oct_vae.vae.checkpoint import make_checkpoint
from oct_vae.vae.detector import AnomalyDetector, calibrate_checkpoint, operating_threshold
from oct_vae.vae.model import VAE, VAEConfig
from oct_vae.vae.scores import ScoreConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    config = VAEConfig(image_size=32, width=2, latent_dim=4, n_blocks=3)
    ckpt = make_checkpoint(VAE(config), config, TrainConfig(seed=0, device="cpu"), {})
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (12, 32, 32), dtype=np.uint8)
    val = rng.integers(0, 255, (15, 32, 32), dtype=np.uint8)
    score_config = ScoreConfig(n_samples=2, batch_size=8, seed=0)
    out = calibrate_checkpoint(ckpt, train, val, score_config, torch.device("cpu"))
    return out, train, val


def test_calibration_holds_the_validation_scores_sorted_and_the_training_mean(calibrated):
    ckpt, train, val = calibrated
    detector = AnomalyDetector(ckpt)
    np.testing.assert_allclose(ckpt["mean_normal"].numpy(), train.mean(0) / 255, rtol=1e-6)
    scores = detector.score(val)
    for name, ref in detector.calibration.items():
        np.testing.assert_allclose(ref, np.sort(scores[name]), rtol=1e-6, err_msg=name)


def test_percentile_is_the_share_of_validation_normals_strictly_below(calibrated):
    ckpt, _, _ = calibrated
    detector = AnomalyDetector(ckpt)
    ref = detector.calibration["reconstruction"]
    assert detector.percentile("reconstruction", ref[0]) == 0.0
    assert detector.percentile("reconstruction", ref[-1] + 1) == 100.0
    for value in (ref[5], (ref[5] + ref[6]) / 2):
        below = sum(1 for r in ref if r < value)
        assert detector.percentile("reconstruction", value) == pytest.approx(100 * below / len(ref))


def test_threshold_is_the_validation_quantile(calibrated):
    ckpt, _, _ = calibrated
    detector = AnomalyDetector(ckpt)
    ref = detector.calibration["kl"]
    assert detector.threshold("kl", 0.8) == operating_threshold(ref, 0.8)
    assert (ref <= detector.threshold("kl", 0.8)).mean() >= 0.8
    with pytest.raises(ValueError, match=r"specificity must be in \(0, 1\)"):
        detector.threshold("kl", 1.0)


def test_scores_of_an_image_do_not_depend_on_the_batch(calibrated):
    ckpt, _, val = calibrated
    detector = AnomalyDetector(ckpt)
    together = detector.score(val[:4])
    alone = detector.score(val[2:3])
    for name in together:
        assert together[name][2] == pytest.approx(alone[name][0], rel=1e-6), name


def test_wrong_shapes_and_uncalibrated_checkpoints_are_clear_errors(calibrated):
    ckpt, _, val = calibrated
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32\)"):
        AnomalyDetector(ckpt).score(val[:, :16])
    bare = {k: v for k, v in ckpt.items() if k != "calibration"}
    with pytest.raises(ValueError, match=r"lacks \['calibration'\].*kedro run --pipeline train"):
        AnomalyDetector(bare)
