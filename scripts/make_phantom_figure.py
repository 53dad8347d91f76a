"""Figure: real Kermany B-scans next to phantom B-scans, one row per class.

Each row shows two real and two phantom scans at full size (resized for display only) and the
same four at 128x128, the model's input (direct resize, aspect ratio ignored, Pillow bilinear).

Usage:
    python scripts/make_phantom_figure.py [--real ../shared/data/kermany-sample]
                                          [--out docs/images/real_vs_phantom.png] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from oct_vae.data.kermany import CLASSES  # noqa: E402
from oct_vae.data.phantom import PhantomConfig, render_bscan, sample_anatomy  # noqa: E402

MODEL_SIZE = (128, 128)


def real_scans(folder: Path, label: str, n: int = 2) -> list[np.ndarray]:
    """First ``n`` real scans of a class (sorted by name); empty when the folder is absent."""
    files = sorted((folder / label).glob("*.jpeg"))[:n]
    return [np.asarray(Image.open(f).convert("L")) for f in files]


def phantom_scans(label: str, seed: int, n: int = 2) -> list[np.ndarray]:
    """``n`` phantom scans of a class (the second one 768 wide), JPEG-coded like the dataset."""
    cfg = PhantomConfig()
    out = []
    for k in range(n):
        anatomy = sample_anatomy(np.random.default_rng([seed, CLASSES.index(label), k]))
        rng = np.random.default_rng([seed, 99, CLASSES.index(label), k])
        img = render_bscan(label, anatomy, rng, width=768 if k == 1 else 512, config=cfg)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=cfg.jpeg_quality)
        out.append(np.asarray(Image.open(buf)))
    return out


def to_model_input(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(MODEL_SIZE, Image.BILINEAR))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path,
                        default=ROOT / ".." / "shared" / "data" / "kermany-sample")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "docs" / "images" / "real_vs_phantom.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.real.is_dir():
        print(f"warning: {args.real} not found, the real columns stay empty", file=sys.stderr)

    fig, axes = plt.subplots(len(CLASSES), 8, figsize=(16, 8.6),
                             gridspec_kw={"width_ratios": [1.6] * 4 + [1] * 4})
    for row, label in enumerate(CLASSES):
        real = real_scans(args.real, label) if args.real.is_dir() else []
        fake = phantom_scans(label, args.seed)
        tiles = [(img, "real") for img in real] + [(None, "real")] * (2 - len(real))
        tiles += [(img, "phantom") for img in fake]
        for col, (img, kind) in enumerate(tiles):
            for ax, im in ((axes[row, col], img),
                           (axes[row, col + 4], None if img is None else to_model_input(img))):
                ax.set_xticks([])
                ax.set_yticks([])
                if im is not None:
                    ax.imshow(im, cmap="gray", vmin=0, vmax=255, aspect="auto",
                              interpolation="antialiased")
                if row == 0:
                    size = "full size" if ax is axes[row, col] else "128x128"
                    ax.set_title(f"{kind} ({size})", fontsize=10)
        axes[row, 0].set_ylabel(label, fontsize=12)
    fig.suptitle("Real Kermany OCT (CC BY 4.0, Kermany et al. 2018) vs synthetic phantom",
                 fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    # grayscale PNG keeps the figure well under 1 MB
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buf).convert("L").save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return args.out


if __name__ == "__main__":
    main()
