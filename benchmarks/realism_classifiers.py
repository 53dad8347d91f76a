"""How far is the phantom from real scans? A classifier two-sample test plus summary statistics.

Framework-free building blocks of ``benchmarks/realism.py`` (issue #13):

- ``image_features``: simple 128x128 features (16x16 thumbnail, row-mean profile, histograms of
  grey levels and of gradient magnitudes) for a logistic regression;
- ``SmallCNN``: a few conv layers trained from scratch on the 128x128 images;
- ``grouped_folds``: stratified 5-fold cross-validation that never splits a patient;
- ``cv_scores_*`` and ``auc_by_class``: pooled out-of-fold scores and ROC AUC real vs phantom,
  per class and overall (0.5: indistinguishable, 1.0: trivially separable);
- ``scan_statistics`` and ``statistics_table``: per-statistic comparison with a standardised
  difference;
- ``load_folder`` / ``phantom_sample``: labelled scans from a Kermany-style folder or freshly
  rendered phantom scans, decoded by the package's own ``load_scan``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from oct_vae.data.imaging import load_scan
from oct_vae.data.kermany import CLASSES, index_scans

SIZE = 128


@dataclass
class ScanSet:
    """Labelled scans: full-size 8-bit images, their 128x128 model input, class and patient."""

    full: list[np.ndarray] = field(default_factory=list)
    small: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, data: bytes, label: str, patient: str, name: str) -> None:
        self.full.append(np.asarray(Image.open(io.BytesIO(data)).convert("L")))
        self.small.append(load_scan(data, SIZE))
        self.labels.append(label)
        self.patients.append(patient)
        self.names.append(name)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {c: self.labels.count(c) for c in CLASSES}


def load_folder(root: str | Path) -> ScanSet:
    """Real labelled scans under ``root/<CLASS>/<CLASS>-<patient>-<n>.jpeg`` (any depth)."""
    root = Path(root)
    scans, _rejected = index_scans(str(p) for p in root.rglob("*") if p.is_file())
    out = ScanSet()
    for s in scans:
        out.add(Path(s.path).read_bytes(), s.label, s.patient_id, Path(s.path).name)
    if not len(out):
        raise ValueError(f"no labelled scans (<CLASS>/<CLASS>-<patient>-<n>.jpeg) under {root}")
    return out


def phantom_sample(counts: dict[str, int], seed: int, config=None) -> ScanSet:  # noqa: ANN001
    """Render ``counts[c]`` phantom scans per class, 1-3 per patient, JPEG-coded as on disk."""
    from oct_vae.data import phantom as ph

    config = config or ph.PhantomConfig(seed=seed)
    out = ScanSet()
    rng = np.random.default_rng([seed, 7])
    for ci, label in enumerate(CLASSES):
        k = 0
        while k < counts.get(label, 0):
            pid = int(1_000_000 + rng.integers(0, 9_000_000))
            for n in range(1, int(rng.integers(1, 4)) + 1):
                if k >= counts[label]:
                    break
                img = ph.scan_image(config, label, pid, n)
                buf = io.BytesIO()
                Image.fromarray(img, "L").save(buf, "JPEG", quality=config.jpeg_quality)
                out.add(buf.getvalue(), label, f"phantom{ci}-{pid}", f"{label}-{pid}-{n}.jpeg")
                k += 1
    return out


# ------------------------------------------------------------------------------- features


def _gradient(img: np.ndarray) -> np.ndarray:
    a = img.astype(np.float32)
    gy = np.zeros_like(a)
    gx = np.zeros_like(a)
    gy[1:-1] = 0.5 * (a[2:] - a[:-2])
    gx[:, 1:-1] = 0.5 * (a[:, 2:] - a[:, :-2])
    return np.hypot(gx, gy)


def image_features(images: np.ndarray) -> np.ndarray:
    """Per image: 16x16 thumbnail, row-mean profile, grey-level and gradient histograms.

    Args:
        images: ``(n, h, w)`` uint8 images (128x128 in the test; h, w divisible by 16).

    Returns:
        ``(n, 256 + h + 32 + 32)`` float features (not standardised).
    """
    x = np.asarray(images, np.float32)
    n, h, w = x.shape
    thumb = x.reshape(n, 16, h // 16, 16, w // 16).mean(axis=(2, 4)).reshape(n, -1)
    profile = x.mean(axis=2)
    edges = np.linspace(0, 256, 33)
    hist = np.stack([np.histogram(im, edges)[0] for im in x]) / (h * w)
    gedges = np.concatenate([np.linspace(0, 40, 32), [np.inf]])
    ghist = np.stack([np.histogram(_gradient(im), gedges)[0] for im in x]) / (h * w)
    return np.concatenate([thumb / 255, profile / 255, hist, ghist], axis=1)


FEATURE_BLOCKS = ("thumbnail 16x16", "row-mean profile", "grey-level histogram",
                  "gradient histogram")


# ------------------------------------------------------------------------------ CV, AUC


def grouped_folds(strata: Sequence, groups: Sequence, n_splits: int = 5,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that never put one patient (group) in both train and test."""
    from sklearn.model_selection import StratifiedGroupKFold

    strata = np.asarray(strata)
    groups = np.asarray(groups)
    n_groups = len(set(groups.tolist()))
    k = min(n_splits, n_groups)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(strata)), strata, groups))


def cv_scores_logistic(features: np.ndarray, y: np.ndarray,
                       folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Out-of-fold P(real) of a standardised L2 logistic regression (C=1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    oof = np.full(len(y), np.nan)
    for tr, te in folds:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(features[tr], y[tr])
        oof[te] = model.predict_proba(features[te])[:, 1]
    return oof


def fit_logistic(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights of the logistic regression fitted on all data, on the standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(features)
    return LogisticRegression(C=1.0, max_iter=2000).fit(z, y).coef_[0]


def _torch():
    import torch

    return torch


def make_cnn():  # noqa: ANN201 - torch module, torch imported lazily
    """Small CNN: three stride-2 conv blocks (8-16-32), 4x4 pooling, one linear logit."""
    nn = _torch().nn
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, 1))


def _to_tensor(images: np.ndarray):  # noqa: ANN202
    torch = _torch()
    return torch.from_numpy(np.asarray(images, np.float32)[:, None] / 255.0 - 0.3)


def train_cnn(images: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 12,
              batch: int = 16):  # noqa: ANN201
    """Train ``make_cnn`` (Adam, class-balanced BCE) and return it in eval mode."""
    torch = _torch()
    torch.manual_seed(seed)
    model = make_cnn()
    x, t = _to_tensor(images), torch.from_numpy(np.asarray(y, np.float32))
    pos = max(float(t.sum()), 1.0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(t) - pos) / pos))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(t), generator=g)
        for i in range(0, len(t), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss_fn(model(x[idx])[:, 0], t[idx]).backward()
            opt.step()
    return model.eval()


def cnn_predict(model, images: np.ndarray) -> np.ndarray:  # noqa: ANN001
    torch = _torch()
    with torch.no_grad():
        return torch.sigmoid(model(_to_tensor(images))[:, 0]).numpy().astype(np.float64)


def cnn_saliency(model, images: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Mean absolute gradient of the logit with respect to the input pixels."""
    x = _to_tensor(images).requires_grad_(True)
    model(x).sum().backward()
    return x.grad.abs().mean(axis=(0, 1)).numpy()


def cv_scores_cnn(images: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                  seed: int = 0, epochs: int = 12) -> np.ndarray:
    """Out-of-fold P(real) of the small CNN, trained from scratch in every fold."""
    oof = np.full(len(y), np.nan)
    for k, (tr, te) in enumerate(folds):
        model = train_cnn(images[tr], y[tr], seed=seed + k, epochs=epochs)
        oof[te] = cnn_predict(model, images[te])
    return oof


def auc_by_class(scores: np.ndarray, is_real: np.ndarray, labels: Sequence[str]) -> dict:
    """ROC AUC real vs phantom overall and within each class (pooled out-of-fold scores)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    out = {"overall": float(roc_auc_score(is_real, scores))}
    for c in CLASSES:
        m = labels == c
        if m.any() and len(set(is_real[m].tolist())) == 2:
            out[c] = float(roc_auc_score(is_real[m], scores[m]))
    return out


# ---------------------------------------------------------------------------- statistics


def _lag1(r: np.ndarray, axis: int) -> float:
    a = np.moveaxis(r, axis, 0)
    x, y = a[:-1].ravel(), a[1:].ravel()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).mean() / max(math.sqrt((x * x).mean() * (y * y).mean()), 1e-9))


def _box(a: np.ndarray, k: int) -> np.ndarray:
    """k x k moving average (same size, edges clamped)."""
    p = k // 2
    b = np.pad(a, p, mode="edge").cumsum(0).cumsum(1)
    b = np.pad(b, ((1, 0), (1, 0)))
    h, w = a.shape
    return (b[k:k + h, k:k + w] - b[:h, k:k + w] - b[k:k + h, :w] + b[:h, :w]) / (k * k)


def scan_statistics(full: np.ndarray) -> dict[str, float]:
    """Summary statistics of one full-size 8-bit B-scan (see ``STAT_NOTES``)."""
    a = full.astype(np.float32)
    h, w = a.shape
    out: dict[str, float] = {"width": float(w), "mean": float(a.mean()), "std": float(a.std())}
    for q in (5, 50, 95, 99):
        out[f"p{q}"] = float(np.percentile(a, q))
    out["near_black"] = float((a < 10).mean())
    out["saturated"] = float((a >= 250).mean())
    smooth = _box(a, 7)
    resid = a - smooth
    tissue = smooth > np.percentile(smooth, 60)
    r = np.where(tissue, resid, 0.0)
    out["speckle_lag1_axial"] = _lag1(r, 0)
    out["speckle_lag1_lateral"] = _lag1(r, 1)
    out["speckle_rel_std"] = float(resid[tissue].std() / max(smooth[tissue].mean(), 1e-6))
    small = np.asarray(Image.fromarray(full).resize((SIZE, SIZE), Image.BILINEAR), np.float32)
    out["gradient_mean_128"] = float(_gradient(small).mean())
    prof = small.mean(axis=1)
    out["profile_peak_row"] = float(np.argmax(prof) / SIZE)
    half = prof.min() + 0.5 * (prof.max() - prof.min())
    out["profile_width_rows"] = float((prof > half).sum() / SIZE)
    # per column: brightest row of the axially smoothed image (the RPE / EZ complex)
    cols = _box(a, 5)
    out["rpe_brightness"] = float(np.median(cols.max(axis=0)))
    # retina thickness proxy: rows per column brighter than the image's 70th percentile
    thr = np.percentile(cols, 70)
    out["thick_rows"] = float(np.median((cols > thr).sum(axis=0)) / h)
    vit = a[: max(h // 10, 4)]
    out["top_rows_mean"] = float(np.median(vit))
    out["bottom_rows_mean"] = float(np.median(a[-max(h // 10, 4):]))
    # JPEG blockiness: mean |step| across 8-px block borders over the mean |step| elsewhere
    d = np.abs(np.diff(a, axis=1))
    border = d[:, 7::8].mean()
    inner = np.delete(d, np.s_[7::8], axis=1).mean()
    out["jpeg_blockiness"] = float(border / max(inner, 1e-6))
    return out


STAT_NOTES = {
    "width": "image width (px)",
    "mean": "mean grey level", "std": "grey-level std",
    "p5": "5th percentile", "p50": "median", "p95": "95th percentile", "p99": "99th percentile",
    "near_black": "share of pixels < 10", "saturated": "share of pixels >= 250",
    "speckle_lag1_axial": "lag-1 correlation of the 7x7 high-pass residual in tissue, axial",
    "speckle_lag1_lateral": "same, lateral",
    "speckle_rel_std": "residual std / local mean in tissue",
    "gradient_mean_128": "mean gradient magnitude at 128x128",
    "profile_peak_row": "row of the brightest row-mean (fraction of the height)",
    "profile_width_rows": "rows above half the row-mean range (fraction)",
    "rpe_brightness": "median over columns of the brightest 5x5 mean",
    "thick_rows": "median rows per column above the 70th percentile (fraction)",
    "top_rows_mean": "median of the top 10 % rows", "bottom_rows_mean": "same, bottom 10 %",
    "jpeg_blockiness": "mean |step| at 8-px borders / elsewhere",
}


def statistics_table(real: ScanSet, fake: ScanSet) -> dict[str, dict[str, dict[str, float]]]:
    """Per statistic and class (and "all"): real and phantom mean and sd, standardised diff."""
    rs = [scan_statistics(x) for x in real.full]
    fs = [scan_statistics(x) for x in fake.full]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for key in STAT_NOTES:
        table[key] = {}
        for c in (*CLASSES, "all"):
            a = np.array([s[key] for s, lab in zip(rs, real.labels, strict=True)
                          if c in ("all", lab)])
            b = np.array([s[key] for s, lab in zip(fs, fake.labels, strict=True)
                          if c in ("all", lab)])
            if not len(a) or not len(b):
                continue
            sd = math.sqrt(0.5 * (a.var() + b.var()))
            table[key][c] = {"real": float(a.mean()), "real_sd": float(a.std()),
                             "phantom": float(b.mean()), "phantom_sd": float(b.std()),
                             "std_diff": float((b.mean() - a.mean()) / sd) if sd > 0 else 0.0}
    return table


# ------------------------------------------------------------------------------- the test


def two_sample_test(real: ScanSet, fake: ScanSet, seed: int = 0, cnn: bool = True,
                    cnn_epochs: int = 12, n_splits: int = 5) -> dict:
    """Classifier two-sample test real vs phantom: out-of-fold AUCs of both classifiers."""
    images = np.stack(real.small + fake.small)
    labels = real.labels + fake.labels
    is_real = np.array([1] * len(real) + [0] * len(fake))
    groups = [f"real:{p}" for p in real.patients] + [f"phantom:{p}" for p in fake.patients]
    strata = [f"{int(r)}{lab}" for r, lab in zip(is_real, labels, strict=True)]
    folds = grouped_folds(strata, groups, n_splits, seed)
    out = {"n_real": real.counts(), "n_phantom": fake.counts(), "n_folds": len(folds)}
    feats = image_features(images)
    out["logistic"] = auc_by_class(cv_scores_logistic(feats, is_real, folds), is_real, labels)
    if cnn:
        scores = cv_scores_cnn(images, is_real, folds, seed=seed, epochs=cnn_epochs)
        out["cnn"] = auc_by_class(scores, is_real, labels)
    return out


def summarise_draws(draws: list[dict]) -> dict:
    """Mean, sd, min and max over phantom draws of every AUC."""
    summary: dict = {}
    for clf in ("logistic", "cnn"):
        if clf not in draws[0]:
            continue
        summary[clf] = {}
        for key in draws[0][clf]:
            v = np.array([d[clf][key] for d in draws])
            summary[clf][key] = {"mean": float(v.mean()), "sd": float(v.std()),
                                 "min": float(v.min()), "max": float(v.max())}
    return summary


def markdown_report(result: dict) -> str:
    """The report as markdown (AUC table, then the statistics table)."""
    lines = ["# Phantom realism: classifier two-sample test", ""]
    lines.append(f"Real: `{result.get('real_root', '?')}`, n per class "
                 f"{result['n_real']}; phantom n per class {result['n_phantom']} per draw, "
                 f"{result['n_draws']} draws (seeds {result['seeds']}), "
                 f"phantom format {result.get('phantom_format', '?')}. "
                 f"{result['n_folds']}-fold StratifiedGroupKFold by patient; ROC AUC of "
                 "the pooled out-of-fold P(real), real class X vs phantom class X. "
                 "0.5 = indistinguishable. Target: <= 0.75 overall, <= 0.80 per class.")
    lines += ["", "| classifier | overall | " + " | ".join(CLASSES) + " |",
              "|---|---" + "|---" * len(CLASSES) + "|"]
    for clf, per in result["auc"].items():
        cells = []
        for key in ("overall", *CLASSES):
            if key in per:
                s = per[key]
                cells.append(f"{s['mean']:.2f} ± {s['sd']:.2f} ({s['min']:.2f}-{s['max']:.2f})")
            else:
                cells.append("-")
        lines.append(f"| {clf} | " + " | ".join(cells) + " |")
    lines += ["", "mean ± sd (min-max) over draws.", "",
              "## Summary statistics (real mean vs phantom mean, standardised difference "
              "d = (phantom - real) / pooled sd)", "",
              "| statistic | " + " | ".join(f"{c}" for c in (*CLASSES, "all")) + " | meaning |",
              "|---" * (len(CLASSES) + 3) + "|"]
    for key, per in result["statistics"].items():
        cells = []
        for c in (*CLASSES, "all"):
            s = per.get(c)
            cells.append("-" if s is None else
                         f"{s['real']:.3g} / {s['phantom']:.3g} (d={s['std_diff']:+.1f})")
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {STAT_NOTES[key]} |")
    lines.append("")
    return "\n".join(lines)


def write_report(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``realism.json`` and ``realism.md`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "realism.json", out_dir / "realism.md"
    js.write_text(json.dumps(result, indent=2))
    md.write_text(markdown_report(result))
    return js, md


def headline(result: dict) -> str:
    auc = result["auc"]
    parts = [f"{clf} {per['overall']['mean']:.2f}" for clf, per in auc.items()]
    return f"realism: classifier AUC overall {', '.join(parts)} (target <= 0.75)"
