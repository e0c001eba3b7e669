"""Packaged training recipes: `divconq distill --config sd_r` works outside a source checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from langchain_divconq.cli.router import main
from langchain_divconq.local.loaders import ADAPTERS_DIR
from langchain_divconq.training.config import DistillConfig
from langchain_divconq.training.recipes import (
    RECIPES_DIR,
    find_recipe,
    recipe_names,
    resolve_recipe_paths,
)

ROOT = Path(__file__).resolve().parents[3]
REPO_RECIPES = ROOT / "training"


def test_packaged_recipes_are_the_repository_ones() -> None:
    # training/*.yaml is the source the scripts use; the package ships exact copies.
    repo = sorted(p.name for p in REPO_RECIPES.glob("*.yaml"))
    assert repo, "training/*.yaml not found"
    assert sorted(p.name for p in RECIPES_DIR.glob("*.yaml")) == repo
    for name in repo:
        assert (RECIPES_DIR / name).read_bytes() == (REPO_RECIPES / name).read_bytes(), (
            f"langchain_divconq/training/recipes/{name} differs from training/{name}: "
            f"copy training/{name} over it"
        )


@pytest.mark.parametrize("name", recipe_names())
def test_each_packaged_recipe_is_a_valid_config(name: str) -> None:
    assert isinstance(DistillConfig.from_yaml(RECIPES_DIR / f"{name}.yaml"), DistillConfig)


def test_find_recipe_by_name_or_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # as a pip user: no training/ folder here
    for spelling in ("sd_r", "sd-r", "SD-R", "sd_r.yaml"):
        assert find_recipe(spelling) == str(RECIPES_DIR / "sd_r.yaml")
    own = tmp_path / "sd_r"  # a file of that name wins over the packaged recipe
    own.write_text("lora_r: 4\n")
    assert find_recipe("sd_r") == "sd_r"
    assert find_recipe("conf/missing.yaml") == "conf/missing.yaml"  # a path: reported on load
    assert find_recipe(None) is None
    with pytest.raises(FileNotFoundError, match="sd_r, sd_t, se_a") as info:
        find_recipe("sd_x")
    assert "--list-recipes" in str(info.value)


def test_init_adapter_of_a_recipe_is_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # A recipe written in a source checkout names the adapter by its checkout-relative path.
    config = DistillConfig(init_adapter="langchain_divconq/local/adapters/gsm8k-decomposer")
    assert not Path(config.init_adapter or "").exists()
    resolved = resolve_recipe_paths(config).init_adapter
    assert resolved is not None
    assert Path(resolved).resolve() == (ADAPTERS_DIR / "gsm8k-decomposer").resolve()
    by_name = resolve_recipe_paths(DistillConfig(init_adapter="general-decomposer"))
    assert Path(by_name.init_adapter or "") == ADAPTERS_DIR / "general-decomposer"
    unknown = DistillConfig(init_adapter="nowhere/adapter")
    assert resolve_recipe_paths(unknown) is unknown  # left for training to report


def test_distill_list_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["distill", "--list-recipes"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in recipe_names():
        assert name in out
    assert "SD-R (Wu et al., 2024)" in out


def test_distill_with_a_recipe_name_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # The recipe is found; what is missing is the dataset it names (relative to the cwd).
    assert main(["distill", "--config", "sd_r"]) == 2
    err = capsys.readouterr().err
    assert "runs/data/sd-r" in err
    assert main(["distill", "--config", "sd_x"]) == 2
    err = capsys.readouterr().err
    assert "neither a file nor a packaged recipe" in err and "sd_t" in err
