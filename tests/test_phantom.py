"""Tests of the synthetic OCT phantom (layout, determinism, reuse, lesions, baselines)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from oct_vae.data import phantom as ph
from oct_vae.data.phantom import (
    CLASSES,
    PhantomConfig,
    fitted,
    generate,
    generate_phantom,
    layered_scans,
    render,
    render_bscan,
    sample_anatomy,
)
from oct_vae.data.phantom.anatomy import _L
from oct_vae.framework.fileio import temp_path
from tests.conftest import REAL_SCAN_FOLDERS
from tests.test_fileio import dead_pid

NAME_RE = re.compile(r"^(NORMAL|CNV|DME|DRUSEN)-\d+-\d+\.jpeg$")
TINY = PhantomConfig(n_normal_patients=5, n_patients_per_disease=3, scans_per_patient=(1, 3),
                     wide_fraction=0.4, test_fraction=0.34, seed=11)
# SHA-1 of rendered pixels (format 4), recorded before the module was split into a package
# (issue #23). Any change to the renderer, its constants or its random streams changes them;
# that needs a new FORMAT_VERSION and these re-recorded. (Recorded with numpy 2.4 on x86-64:
# a numpy whose float32 exp/sin rounds differently may change a pixel too.)
GOLDEN_RENDERS = {  # (label, width): render_bscan, severity 1.5, anatomy and scan seeds 21
    ("NORMAL", 512): "da6863797ce39e87ce0f4508f699a6c2b0eabbd2",
    ("CNV", 768): "539f4a4cd28b3cdccb47c472bca853b1cb9b8ebe",
    ("DME", 1536): "8e23193debb90849a2af24af356793d0ba8ba44d",
    ("DRUSEN", 512): "7597ff485db7ce2b4cd63e42aa008b6d6d9e25d6",
}
GOLDEN_SCANS = {  # (label, patient, n): scan_image of TINY
    ("NORMAL", 1234567, 2): "3428a4b0a6edfbdd321d2d76a389c0e3c5eae355",
    ("DME", 7654321, 1): "6591c2b64f3a65321ef61f8edecbfff41d51288c",
}
GOLDEN_LAYERED = "a5dd3c440ed9287320b98c9d4285a2fb7bc8c0fb"  # layered_scans(300, 64, seed=5)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpeg"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("phantom") / "ph"
    return root, generate_phantom(root, TINY)


def test_render_shape_dtype_and_label_check() -> None:
    anatomy = sample_anatomy(np.random.default_rng(0))
    for width in (512, 768):
        img = render_bscan("NORMAL", anatomy, np.random.default_rng(1), width, 496)
        assert img.shape == (496, width) and img.dtype == np.uint8
        assert 10 < img.mean() < 120 and img.std() > 15
    with pytest.raises(ValueError, match="unknown label"):
        render_bscan("AMD", anatomy, np.random.default_rng(1))


def test_rendering_is_bit_identical_to_the_recorded_scans() -> None:
    anatomy = sample_anatomy(np.random.default_rng([21, 1]))
    config = PhantomConfig(severity=1.5)
    for (label, width), digest in GOLDEN_RENDERS.items():
        img = render_bscan(label, anatomy, np.random.default_rng([21, 2]), width, 496, config)
        assert img.shape == (496, width) and img.dtype == np.uint8
        assert hashlib.sha1(img.tobytes()).hexdigest() == digest, (label, width)
    for (label, pid, n), digest in GOLDEN_SCANS.items():
        img = ph.scan_image(TINY, label, pid, n)
        assert hashlib.sha1(img.tobytes()).hexdigest() == digest, (label, pid, n)
    assert hashlib.sha1(layered_scans(300, 64, seed=5).tobytes()).hexdigest() == GOLDEN_LAYERED


def test_patients_differ_and_anatomy_is_deterministic() -> None:
    a, b = sample_anatomy(np.random.default_rng(3)), sample_anatomy(np.random.default_rng(3))
    c = sample_anatomy(np.random.default_rng(4))
    assert a == b and a != c
    img_a = render_bscan("NORMAL", a, np.random.default_rng(5))
    img_c = render_bscan("NORMAL", c, np.random.default_rng(5))
    assert np.abs(img_a.astype(int) - img_c.astype(int)).mean() > 5


def test_layout_and_naming(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    files = sorted(root.rglob("*.jpeg"))
    assert len(files) == summary["n_files"] == sum(summary["counts"].values())
    widths, owner, scans = set(), {}, {}
    for path in files:
        split, label = path.relative_to(root).parts[:2]
        assert split in ("train", "test") and label in CLASSES
        assert NAME_RE.match(path.name) and path.name.startswith(label + "-")
        _, pid, n = path.stem.split("-")
        assert len(pid) == 7
        assert owner.setdefault(pid, (label, split)) == (label, split)  # one class, one split
        scans.setdefault(pid, []).append(int(n))
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L"
            assert im.size in ((512, 496), (768, 496), (1536, 496))
            widths.add(im.size[0])
    assert {512, 768} <= widths <= {512, 768, 1536}
    assert all(sorted(v) == list(range(1, len(v) + 1)) for v in scans.values())
    n_pat = {c: sum(1 for lab, _ in owner.values() if lab == c) for c in CLASSES}
    assert n_pat == {"NORMAL": 5, "CNV": 3, "DME": 3, "DRUSEN": 3} == summary["patients"]
    assert {s for _, s in owner.values()} == {"train", "test"}
    meta = json.loads((root / ph.META_NAME).read_text())
    assert meta["config"]["seed"] == 11 and meta["format_version"] == ph.FORMAT_VERSION
    assert not (root / generate._PARTIAL_NAME).exists()


def test_same_seed_same_bytes_any_workers(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny
    again = generate_phantom(tmp_path / "b", TINY, workers=2)
    assert again["reused"] is False
    assert _files(tmp_path / "b") == _files(root)
    other = generate_phantom(tmp_path / "c", replace(TINY, seed=12))
    assert other["n_files"] > 0
    a, c = _files(root), _files(tmp_path / "c")
    assert not set(a.values()) & set(c.values())  # no identical image across seeds
    # the single-scan entry point reproduces a written file exactly (up to JPEG coding)
    path = sorted(root.rglob("*.jpeg"))[0]
    label, pid, n = path.stem.split("-")
    with Image.open(path) as im:
        written = np.asarray(im, dtype=float)
    assert np.abs(ph.scan_image(TINY, label, int(pid), int(n)) - written).mean() < 3.0


def test_reuse_does_not_rewrite(tiny: tuple[Path, dict]) -> None:
    root, first = tiny
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    second = generate_phantom(root, TINY)
    assert second["reused"] is True
    assert {k: v for k, v in second.items() if k != "reused"} == \
        {k: v for k, v in first.items() if k != "reused"}
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == mtimes


def test_config_mismatch_is_a_clear_error(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    with pytest.raises(ValueError, match=r"(?s)another phantom.*Delete the folder") as e:
        generate_phantom(root, replace(TINY, severity=2.0))
    assert "severity" in str(e.value) and "format" not in str(e.value)


def test_a_phantom_of_an_older_format_is_refused_naming_both_formats(
        tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    original = (root / ph.META_NAME).read_text()
    (root / ph.META_NAME).write_text(json.dumps({**json.loads(original), "format_version": 2}))
    try:
        with pytest.raises(ValueError, match=rf"phantom format 2, this code writes format "
                           rf"{ph.FORMAT_VERSION}\). Delete the folder"):
            generate_phantom(root, TINY)
    finally:
        (root / ph.META_NAME).write_text(original)  # the module's phantom, as it was


def test_interrupted_generation_is_completed(tmp_path: Path) -> None:
    cfg = PhantomConfig(n_normal_patients=2, n_patients_per_disease=1, scans_per_patient=(2, 2),
                        seed=5)
    root = tmp_path / "ph"
    generate_phantom(root, cfg)
    reference = _files(root)
    # simulate a crash: no phantom.json yet, the partial marker and some files missing
    (root / ph.META_NAME).unlink()
    (root / generate._PARTIAL_NAME).write_text(json.dumps(
        {"config": generate._config_dict(cfg), "format_version": ph.FORMAT_VERSION}))
    victim = root / sorted(reference)[0]
    victim.unlink()
    stale = temp_path(victim, pid=dead_pid())  # a killed writer's leftover
    stale.write_bytes(b"half a jpeg")
    live = temp_path(victim)  # a concurrent run's file in progress: kept
    live.write_bytes(b"a jpeg being written")
    assert generate_phantom(root, cfg)["reused"] is False
    assert not stale.exists() and live.exists()
    live.unlink()
    assert _files(root) == reference and (root / ph.META_NAME).exists()
    # a missing file under a complete phantom.json is regenerated too
    victim.unlink()
    generate_phantom(root, cfg)
    assert _files(root) == reference
    # an interrupted run of another configuration is not mixed in
    (root / ph.META_NAME).unlink()
    (root / generate._PARTIAL_NAME).write_text(json.dumps(
        {"config": {**generate._config_dict(cfg), "seed": 6},
         "format_version": ph.FORMAT_VERSION}))
    with pytest.raises(ValueError, match=r"configuration stored vs requested: \{'seed': \(6, 5\)"):
        generate_phantom(root, cfg)


def test_config_is_validated() -> None:
    for bad in ({"scans_per_patient": (3, 2)}, {"scans_per_patient": (0, 2)},
                {"wide_fraction": 1.5}, {"severity": 0.0}, {"n_normal_patients": -1}):
        with pytest.raises(ValueError):
            PhantomConfig(**bad)


def test_foreign_image_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train" / "CNV").mkdir(parents=True)
    Image.new("L", (512, 496)).save(tmp_path / "train" / "CNV" / "CNV-1234567-1.jpeg")
    with pytest.raises(ValueError, match="not a phantom"):
        generate_phantom(tmp_path, TINY)
    assert not (tmp_path / ph.META_NAME).exists()


def _bounds(label: str, seed: int, width: int = 512) -> np.ndarray:
    """Layer boundaries (ILM .. Bruch, choroid) of ``_pair``'s scan, per full-res column."""
    anatomy = sample_anatomy(np.random.default_rng([seed, 1]))
    sc, _ = render._scene(label, anatomy, np.random.default_rng([seed, 2]), width, 496,
                      PhantomConfig())
    cols = np.minimum(np.arange(width) * sc.s.shape[0] // width, sc.s.shape[0] - 1)
    return sc.bounds[:, cols]


def _pair(label: str, seed: int, width: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same anatomy and scan seed rendered as NORMAL and as ``label``; normal boundaries."""
    anatomy = sample_anatomy(np.random.default_rng([seed, 1]))
    normal = render_bscan("NORMAL", anatomy, np.random.default_rng([seed, 2]), width)
    sick = render_bscan(label, anatomy, np.random.default_rng([seed, 2]), width)
    return normal.astype(int), sick.astype(int), _bounds("NORMAL", seed, width)


def _bbox_fraction(mask: np.ndarray) -> float:
    """Area share of the box holding the central 90 % of the masked pixels (rows and columns)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0.0
    (r0, r1), (c0, c1) = np.percentile(rows, [5, 95]), np.percentile(cols, [5, 95])
    return (r1 - r0 + 1) * (c1 - c0 + 1) / mask.size


@pytest.mark.parametrize("label", ["CNV", "DME", "DRUSEN"])
def test_lesions_are_local_and_in_the_expected_direction(label: str) -> None:
    rows = np.arange(496)[:, None]
    for seed in range(4):
        normal, sick, b = _pair(label, seed)
        diff = sick - normal
        changed = np.abs(diff) > 50
        assert changed.any(), "the lesion must change the image"
        assert changed.mean() < 0.08 and _bbox_fraction(changed) < 0.4
        ilm, bruch = b[0][None, :], b[_L["SUB"] + 1][None, :]
        # brightening by lifted RPE / deposits / SHRM (moderately reflective in v2); fluid
        bright, dark = diff > 70, diff < -50
        if label in ("CNV", "DRUSEN"):
            # raised RPE / new material: bright pixels just above the healthy RPE position
            reach = 120 if label == "CNV" else 60
            above_rpe = (rows < bruch - 3) & (rows > bruch - reach)
            # the lifted retina brightens the vitreous a little too; nothing brightens below
            assert (bright & above_rpe).sum() > 100
            assert (bright & (rows > bruch + 3)).sum() < 0.05 * bright.sum()
            if label == "DRUSEN":
                assert (bright & above_rpe).sum() > 0.7 * bright.sum()
        else:
            # dark cysts inside the retina, which thickens (the ILM rises)
            sick_b = _bounds("DME", seed)
            inside = (rows > sick_b[0][None, :]) & (rows < bruch)
            assert dark.sum() > 50 and (dark & inside).sum() > 0.9 * dark.sum()
            thick_n, thick_d = bruch[0] - ilm[0], sick_b[_L["SUB"] + 1] - sick_b[0]
            assert (thick_d - thick_n).max() > 15 and (thick_d >= thick_n - 1e-3).all()


def test_normal_rendering_has_no_lesion_and_drusen_are_smaller_than_cnv() -> None:
    normal, again, _ = _pair("NORMAL", 0)
    assert np.array_equal(normal, again)
    area = {lab: np.mean([(np.abs(_pair(lab, s)[1] - _pair(lab, s)[0]) > 50).sum()
                          for s in range(5)]) for lab in ("CNV", "DRUSEN")}
    assert 0 < area["DRUSEN"] < 0.5 * area["CNV"]


def test_severity_scales_lesions() -> None:
    anatomy = sample_anatomy(np.random.default_rng([0, 1]))

    def changed(sev: float) -> int:
        cfg = PhantomConfig(severity=sev)
        n = render_bscan("NORMAL", anatomy, np.random.default_rng(9), config=cfg).astype(int)
        d = render_bscan("CNV", anatomy, np.random.default_rng(9), config=cfg).astype(int)
        return int((np.abs(d - n) > 50).sum())

    assert changed(0.5) < changed(1.0) < changed(1.5)


def _small(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((128, 128), Image.BILINEAR), np.float32)


def _dataset(label: str, n: int, offset: int, cfg: PhantomConfig) -> np.ndarray:
    out = []
    for k in range(offset, offset + n):
        anatomy = sample_anatomy(np.random.default_rng([77, CLASSES.index(label), k]))
        rng = np.random.default_rng([78, CLASSES.index(label), k])
        width = 768 if rng.random() < cfg.wide_fraction else 512
        out.append(_small(render_bscan(label, anatomy, rng, width, 496, cfg)))
    return np.stack(out)


def test_global_baselines_do_not_separate_but_lesions_show_at_128() -> None:
    cfg = PhantomConfig()
    train = _dataset("NORMAL", 120, 0, cfg)
    normals = _dataset("NORMAL", 120, 1000, cfg)
    sick = {c: _dataset(c, 40, 0, cfg) for c in CLASSES[1:]}
    mean_normal = train.mean(0)
    scores = {"mean": lambda x: x.mean((1, 2)),
              "l2": lambda x: np.sqrt(((x - mean_normal) ** 2).sum((1, 2)))}
    for name, score in scores.items():
        sn = score(normals)
        groups = {**{c: score(v) for c, v in sick.items()},
                  "pooled": np.concatenate([score(v) for v in sick.values()])}
        for group, sd in groups.items():
            auc = roc_auc_score(np.r_[np.zeros(len(sn)), np.ones(len(sd))], np.r_[sn, sd])
            assert max(auc, 1 - auc) < 0.75, (name, group, auc)
    # ... while at the model's 128x128 input the lesions are plainly visible locally
    for label in CLASSES[1:]:
        normal, sick_img, _ = _pair(label, 3)
        diff = np.abs(_small(sick_img.astype(np.uint8)) - _small(normal.astype(np.uint8)))
        assert (diff > 40).sum() >= (4 if label == "DRUSEN" else 15), label


def test_intensity_statistics_resemble_real_scans(real_scans_root) -> None:
    def stats(images: list[np.ndarray]) -> np.ndarray:
        return np.array([[a.mean(), np.percentile(a, 50), np.percentile(a, 95),
                          np.percentile(a, 5)] for a in images])

    real = [np.asarray(Image.open(p).convert("L"), float)
            for folder in REAL_SCAN_FOLDERS
            for p in sorted(folder.glob("NORMAL/*.jpeg"))]
    cfg = PhantomConfig()
    fake = []
    for k in range(24):
        rng = np.random.default_rng([6, k])
        fake.append(render_bscan("NORMAL", sample_anatomy(np.random.default_rng([5, k])), rng,
                                 ph.scan_width(rng, cfg), config=cfg).astype(float))
    r, f = np.median(stats(real), 0), np.median(stats(fake), 0)
    assert np.all(np.abs(f - r) <= np.maximum(0.35 * r, 6.0)), (r, f)


def test_iter_files_lists_everything(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    listed = list(ph.iter_files(root))
    assert len(listed) == summary["n_files"] and all(p.suffix == ".jpeg" for p in listed)
    assert os.path.commonpath([str(p) for p in listed]) == str(root)


def test_tone_curve_lut_is_the_monotone_interpolation_of_its_knots() -> None:
    identity = ph.tone_lut(((0, 0), (255, 255)))
    assert np.array_equal(identity, np.arange(256, dtype=np.uint8))
    lut = ph.tone_lut(((0, 0), (100, 120), (255, 255)))
    assert lut[50] == 60 and lut[100] == 120 and lut[255] == 255
    assert np.all(np.diff(lut.astype(int)) >= 0)
    assert np.all(np.diff(fitted.TONE_LUT.astype(int)) >= 0) and fitted.TONE_LUT[255] == 255
    assert np.array_equal(fitted.TONE_LUT[:49], np.arange(49))  # identity below 48
    for bad in (((0, 0), (0, 10), (255, 255)), ((0, 0), (100, 50), (200, 40)), ((0, 0, 0),)):
        with pytest.raises(ValueError, match="tone knots"):
            ph.tone_lut(bad)


@pytest.mark.parametrize(("width", "changes"), [(512, False), (768, True)])
def test_wide_gain_spread_acts_on_wide_scans_only(monkeypatch: pytest.MonkeyPatch, width: int,
                                                  changes: bool) -> None:
    anatomy = sample_anatomy(np.random.default_rng(4))
    before = render_bscan("NORMAL", anatomy, np.random.default_rng(9), width)
    monkeypatch.setattr(fitted, "WIDE_GAIN_SD", fitted.WIDE_GAIN_SD + 0.5)
    after = render_bscan("NORMAL", anatomy, np.random.default_rng(9), width)
    assert (not np.array_equal(before, after)) is changes


def test_the_renderer_reads_the_fitted_constants_when_it_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # benchmarks/fit_phantom.py sets them on the ``fitted`` module while it searches
    anatomy = sample_anatomy(np.random.default_rng(4))
    base = {w: render_bscan("NORMAL", anatomy, np.random.default_rng(9), w) for w in (512, 768)}
    for name, width in (("NARROW_NOISE_FLOOR", 512), ("NARROW_LIFT", 512), ("NOISE_FLOOR", 768),
                        ("WIDE_BLACK_LEVEL", 768)):
        with monkeypatch.context() as m:
            m.setattr(fitted, name, getattr(fitted, name) + 3.0)
            after = render_bscan("NORMAL", anatomy, np.random.default_rng(9), width)
            assert not np.array_equal(after, base[width]), name
    monkeypatch.setattr(fitted, "BRUCH_Y", (0.25, 0.25))
    assert sample_anatomy(np.random.default_rng(4)).bruch_y == 0.25


def test_the_display_tone_curve_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    anatomy = sample_anatomy(np.random.default_rng(4))
    curved, lut = render_bscan("NORMAL", anatomy, np.random.default_rng(9), 512), fitted.TONE_LUT
    assert not np.array_equal(lut, np.arange(256))
    monkeypatch.setattr(fitted, "TONE_LUT", ph.tone_lut(((0, 0), (255, 255))))
    flat = render_bscan("NORMAL", anatomy, np.random.default_rng(9), 512)
    wedge = (curved == 255) & (flat == 255)
    assert np.array_equal(curved[~wedge], lut[flat[~wedge]])


_GENERATE = """
import json, sys
from oct_vae.data.phantom import PhantomConfig, generate_phantom
cfg = PhantomConfig(n_normal_patients=6, n_patients_per_disease=2, scans_per_patient=(1, 2),
                    seed=3)
print(json.dumps(generate_phantom(sys.argv[1], cfg)["reused"]))
"""


def test_two_processes_generating_one_folder_take_turns(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-c", _GENERATE, str(root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    # one wrote the phantom; the other waited and reused it (without the lock both write,
    # or one refuses the other's half-written folder)
    assert sorted(json.loads(out) for out, _ in outs) == [False, True]
    meta = json.loads((root / ph.META_NAME).read_text())
    assert meta["n_files"] == len(list(ph.iter_files(root)))
