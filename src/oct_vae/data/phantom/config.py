"""The phantom's parameters (``PhantomConfig``, stored in ``phantom.json``) and format version."""

from __future__ import annotations

from dataclasses import dataclass

# The version of the written images: a folder of another version is never reused or mixed.
# Versions 2 to 4 were fitted to summary statistics of 59 real scans (see ``fitted``).
FORMAT_VERSION = 4
REF_HEIGHT = 496  # all vertical sizes of the anatomy and lesions are pixels at this height


@dataclass(frozen=True)
class PhantomConfig:
    """Parameters of a phantom dataset (stored in ``phantom.json``)."""

    n_normal_patients: int = 450
    n_patients_per_disease: int = 60
    scans_per_patient: tuple[int, int] = (2, 8)
    wide_fraction: float = 0.33
    severity: float = 1.0
    cnv_lesions: tuple[int, int] = (1, 2)
    dme_cysts: tuple[int, int] = (2, 10)
    drusen_count: tuple[int, int] = (3, 7)
    test_fraction: float = 0.1
    jpeg_quality: int = 75
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("scans_per_patient", "cnv_lesions", "dme_cysts", "drusen_count"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name == "scans_per_patient" and lo < 1):
                raise ValueError(f"PhantomConfig.{name} must be an inclusive range, got {lo, hi}")
        if min(self.n_normal_patients, self.n_patients_per_disease) < 0 or self.seed < 0:
            raise ValueError("patient counts and seed must be non-negative")
        if not (0.0 <= self.wide_fraction <= 1.0 and 0.0 <= self.test_fraction <= 1.0):
            raise ValueError("wide_fraction and test_fraction must lie in [0, 1]")
        if self.severity <= 0 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("severity must be positive and jpeg_quality in 1..100")
