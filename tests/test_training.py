import numpy as np
import pytest
import torch

from oct_vae.training.batches import batch_count
from oct_vae.training.device import resolve_device
from oct_vae.training.distributed import train as train_vae
from oct_vae.training.steps import TrainStep
from oct_vae.training.trainer import NonFiniteLossError, TrainConfig, Trainer, to_float_batch
from oct_vae.vae.checkpoint import load_model
from oct_vae.vae.losses import negative_elbo
from oct_vae.vae.model import VAE, VAEConfig, reparameterize

MODEL = VAEConfig(image_size=32, width=4, latent_dim=8, n_blocks=3)


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    # structured images (a bright band at a random height) so there is something to learn
    imgs = np.zeros((n, 32, 32), dtype=np.uint8)
    for i, row in enumerate(rng.integers(6, 26, n)):
        imgs[i, row - 2 : row + 2] = 220
    imgs += rng.integers(0, 30, imgs.shape, dtype=np.uint8)
    return imgs[: n - 16], imgs[n - 16 :]


def _cfg(**kw):
    base = dict(epochs=2, batch_size=8, lr=1e-3, seed=3, device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _weights(result):
    return result.checkpoint["state_dict"]


def test_finite_loss_and_history():
    train, val = _data()
    result = train_vae(train, val, MODEL, _cfg())
    assert len(result.history) == 2
    for row in result.history:
        for k in ("train_total", "train_recon", "train_kl", "val_total", "val_recon", "val_kl"):
            assert np.isfinite(row[k])
        assert row["images_per_s"] > 0 and row["seconds"] > 0
    meta = result.checkpoint["metadata"]
    best = min(result.history, key=lambda r: r["val_total"])
    assert meta["best_epoch"] == best["epoch"]


def test_optimisation_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = VAE(MODEL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = to_float_batch(torch.from_numpy(_data()[0][:16]))
    losses = []
    for _ in range(30):
        logits, mu, logvar = model(x)
        loss = negative_elbo(logits, x, mu, logvar)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_same_seed_gives_identical_weights_and_other_seed_does_not():
    train, val = _data()
    a, b = train_vae(train, val, MODEL, _cfg()), train_vae(train, val, MODEL, _cfg())
    c = train_vae(train, val, MODEL, _cfg(seed=4))
    assert all(torch.equal(_weights(a)[k], _weights(b)[k]) for k in _weights(a))
    assert not all(torch.equal(_weights(a)[k], _weights(c)[k]) for k in _weights(a))


def test_resume_equals_uninterrupted(tmp_path):
    train, val = _data()
    full = train_vae(train, val, MODEL, _cfg(epochs=3, checkpoint_dir=str(tmp_path / "full")))
    # "interrupted" run: 2 of 3 epochs, then a new process resumes from last.pt
    part_dir = str(tmp_path / "part")
    train_vae(train, val, MODEL, _cfg(epochs=2, checkpoint_dir=part_dir))
    trainer = Trainer(train, val, MODEL, _cfg(epochs=3, checkpoint_dir=part_dir, resume=True))
    assert trainer.start_epoch == 3
    resumed = trainer.fit()
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for k, v in _weights(full).items():
        assert torch.equal(v, _weights(resumed)[k]), k
    last = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert last["epoch"] == 3


def test_resume_refuses_a_different_configuration(tmp_path):
    train, val = _data()
    train_vae(train, val, MODEL, _cfg(epochs=1, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="different model or training configuration"):
        Trainer(
            train, val, MODEL, _cfg(epochs=2, lr=5e-4, checkpoint_dir=str(tmp_path), resume=True)
        )


def test_nan_guard_names_epoch_and_batch_and_keeps_last_good_checkpoint(tmp_path):
    train, val = _data()
    trainer = Trainer(train, val, MODEL, _cfg(epochs=2, checkpoint_dir=str(tmp_path)))
    trainer.fit()  # two good epochs on disk
    good = torch.load(tmp_path / "last.pt", weights_only=True)
    poisoned = Trainer(train, val, MODEL, _cfg(epochs=4, checkpoint_dir=str(tmp_path), resume=True))
    original = poisoned.step_model
    calls = {"n": 0}

    def poison(x, eps):
        calls["n"] += 1
        terms = original(x, eps)
        return terms * float("nan") if calls["n"] == 2 else terms  # 2nd batch of epoch 3

    poisoned.step_model = poison
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, batch 2/"):
        poisoned.fit()
    after = torch.load(tmp_path / "last.pt", weights_only=True)
    assert after["epoch"] == good["epoch"] == 2
    assert all(torch.equal(after["model"][k], good["model"][k]) for k in good["model"])


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    train, val = _data()
    result = train_vae(train, val, MODEL, _cfg(epochs=1))
    path = tmp_path / "m.pt"
    torch.save(result.checkpoint, path)
    loaded = torch.load(path, weights_only=True)
    model = load_model(loaded)
    x = to_float_batch(torch.from_numpy(val[:4]))
    a = model(x, sample=False)[0]
    b = result.model(x, sample=False)[0]
    assert torch.allclose(a, b)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    mps = getattr(torch.backends, "mps", None)
    expected = (
        "cuda" if torch.cuda.is_available()
        else "mps" if mps is not None and mps.is_available()
        else "cpu"
    )
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu:0") == torch.device("cpu", 0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(RuntimeError):
        resolve_device("tpu")


def test_bad_inputs_are_clear_errors():
    train, val = _data()
    with pytest.raises(TypeError, match="uint8"):
        Trainer(train.astype(np.float32), val, MODEL, _cfg())
    with pytest.raises(ValueError, match="shape"):
        Trainer(train[:, :16], val, MODEL, _cfg())
    with pytest.raises(ValueError, match="empty"):
        Trainer(train[:0], val, MODEL, _cfg())
    with pytest.raises(ValueError, match="likelihood"):
        _cfg(likelihood="laplace")


def test_training_step_is_the_negative_elbo_of_the_given_noise():
    torch.manual_seed(0)
    model = VAE(MODEL)
    x = to_float_batch(torch.from_numpy(_data()[0][:6]))
    eps = torch.randn((6, MODEL.latent_dim, 1, 1), generator=torch.Generator().manual_seed(1))
    cfg = _cfg()
    terms = TrainStep(model, cfg, amp=False, device_type="cpu")(x, eps)
    mu, logvar = model.encode(x)
    want = negative_elbo(model.decode(reparameterize(mu, logvar, eps)), x, mu, logvar,
                         cfg.likelihood, cfg.beta, cfg.gaussian_sigma)
    assert torch.equal(terms, torch.stack([want["recon"], want["kl"], want["total"]]))
    other = TrainStep(model, _cfg(), amp=False, device_type="cpu")(x, eps + 1.0)
    assert other[0] != terms[0]  # the noise passed in is the noise used


def test_batch_count_keeps_global_batches_and_skips_a_tail_smaller_than_the_ranks():
    assert batch_count(41, 16, 1) == 3  # 16, 16, 9
    assert batch_count(41, 16, 2) == 3  # the tail of 9 is split over 2 ranks
    assert batch_count(33, 16, 1) == 3  # one process trains on every image
    assert batch_count(33, 16, 2) == 2  # a tail of 1 cannot give both ranks an image
    assert batch_count(32, 16, 4) == 2
