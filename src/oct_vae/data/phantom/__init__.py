"""Synthetic retinal OCT phantom in the layout and naming of the Kermany (2018) dataset.

A fresh clone has no real data (it is a manual download), so the pipeline runs on this phantom:
layered retinas with a foveal pit on a curved, tilted band, a textured choroid, speckle, vessel
shadows and the white registration wedges of real Spectralis exports, written as
``<root>/{train,test}/<CLASS>/<CLASS>-<patient>-<n>.jpeg`` (8-bit grayscale JPEG at the real
files' quality 75; 512x496, 768x496 or wide-field 1536x496). Versions 2 to 4
(``FORMAT_VERSION``) were fitted to summary statistics of 59 real scans (docs/phantom.md,
docs/realism.md; version 4 by ``benchmarks/fit_phantom.py``).
Diseases (CNV, DME, DRUSEN) are local lesions whose size and contrast scale with ``severity``;
anatomy, gain and artefacts vary more between patients than lesions change global statistics,
so disease is visible in local structure only, as on real scans.

Only numpy, Pillow and the standard library are used. Every scan has its own random stream
derived from ``(seed, patient id, scan index)``, so output bytes do not depend on generation
order or on the number of worker processes.

Modules, in the order an image is made:

* ``config``: ``PhantomConfig``, ``FORMAT_VERSION``, ``REF_HEIGHT``;
* ``fitted``: the constants fitted to real scans and the display tone curve;
* ``anatomy``: the retina's layers and a patient's anatomy (``sample_anatomy``);
* ``scene``: the healthy geometry of one B-scan;
* ``lesions``: CNV, DME and drusen drawn into a scene;
* ``render``: one B-scan's pixels (``render_bscan``);
* ``generate``: a whole dataset on disk (``generate_phantom``, ``scan_image``, ``iter_files``);
* ``synthetic``: ``layered_scans``, fast retina-like images for benchmarks and tests.
"""

from oct_vae.data.kermany import CLASSES
from oct_vae.data.phantom.anatomy import Anatomy, sample_anatomy
from oct_vae.data.phantom.config import FORMAT_VERSION, REF_HEIGHT, PhantomConfig
from oct_vae.data.phantom.fitted import tone_lut
from oct_vae.data.phantom.generate import (
    META_NAME,
    generate_phantom,
    iter_files,
    scan_image,
    scan_width,
)
from oct_vae.data.phantom.render import render_bscan
from oct_vae.data.phantom.synthetic import layered_scans

__all__ = [
    "CLASSES",
    "FORMAT_VERSION",
    "META_NAME",
    "REF_HEIGHT",
    "Anatomy",
    "PhantomConfig",
    "generate_phantom",
    "iter_files",
    "layered_scans",
    "render_bscan",
    "sample_anatomy",
    "scan_image",
    "scan_width",
    "tone_lut",
]
