"""The development-phantom selection of the filtered residual's settings (the script's parts
that do not train: project set-up and the choice rule)."""

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from oct_vae.settings import CONFIG_LOADER_ARGS
from scripts.select_score_settings import BASE_PHANTOM_SEED, choose, main, make_dev_project


def test_dev_project_draws_another_phantom_and_split(tmp_path: Path):
    project = make_dev_project(tmp_path / "dev", seed=7)
    # the project's resolvers (${pins:}, ${project_root:}), as a Kedro session registers them
    conf = OmegaConfigLoader(str(project / "conf"), **CONFIG_LOADER_ARGS)
    assert conf["catalog"]["raw_scans"]["phantom"]["seed"] == 7
    assert conf["catalog"]["raw_scans"]["path"] == "data/base/01_raw/phantom"  # inside the copy
    assert conf["parameters"]["seed"] == 7
    base = OmegaConfigLoader(str(Path("conf")), **{**CONFIG_LOADER_ARGS, "default_run_env": "base"})
    assert base["catalog"]["raw_scans"]["phantom"]["seed"] == BASE_PHANTOM_SEED


def test_choice_takes_the_best_filtered_all_auc_then_the_plainer_setting():
    rows = [
        {"sigma": 2.0, "k_percent": 1.0, "All": 0.93},
        {"sigma": 0.0, "k_percent": 5.0, "All": 0.99},  # unfiltered: the top-k score
        {"sigma": 1.0, "k_percent": 2.0, "All": 0.93},
        {"sigma": 1.0, "k_percent": 5.0, "All": 0.93},
    ]
    assert choose(rows) is rows[3]
    assert choose(rows[:2]) is rows[0]


def test_the_reported_phantom_cannot_be_the_development_one():
    with pytest.raises(SystemExit):
        main(["--seeds", "7", str(BASE_PHANTOM_SEED)])


def test_grid_is_averaged_over_seeds_cell_by_cell():
    from scripts.select_score_settings import average

    per_seed = {
        7: [{"sigma": 2.0, "k_percent": 1.0, "All": 0.90, "CNV": 1.0},
            {"sigma": 1.0, "k_percent": 1.0, "All": 0.94, "CNV": 0.8}],
        8: [{"sigma": 2.0, "k_percent": 1.0, "All": 0.96, "CNV": 0.9},
            {"sigma": 1.0, "k_percent": 1.0, "All": 0.94, "CNV": 0.8}],
    }
    rows = average(per_seed)
    assert rows[0]["All"] == pytest.approx(0.93) and rows[0]["CNV"] == pytest.approx(0.95)
    assert rows[0]["All_seed_7"] == 0.90 and rows[0]["All_seed_8"] == 0.96
    assert choose(rows) is rows[1]  # seed 8 alone would pick rows[0]
