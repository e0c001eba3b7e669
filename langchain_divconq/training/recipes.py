"""Training recipes shipped in the package: `divconq distill --config sd_r` works after pip.

The YAML files under ``langchain_divconq/training/recipes/`` are copies of the
repository's ``training/*.yaml`` (a test keeps them equal), one per recipe:
the paper's variants (``sd_t``, ``sd_r``, ``se_t``, ``se_a``) and the settings of
the two shipped adapters (``shipped_decomposer``, ``general_decomposer``). Their
relative paths (``dataset``, ``output_dir``) are relative to the working
directory, as for any config file; pass ``--dataset DIR`` for the folder that
``divconq dataset --out DIR`` wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_divconq.training.config import DistillConfig

__all__ = [
    "RECIPES_DIR",
    "add_recipe_arguments",
    "find_recipe",
    "recipe_names",
    "resolve_recipe_paths",
]

RECIPES_DIR = Path(__file__).parent / "recipes"
"""Where the packaged recipes live: one ``<name>.yaml`` per recipe."""

_PACKAGE_PARENT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``langchain_divconq`` package (site-packages, or a checkout)."""


def recipe_names() -> list[str]:
    """Return the names of the packaged recipes, sorted.

    Example:
        >>> "sd_r" in recipe_names()
        True

    """
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def _describe(name: str) -> str:
    """Return a recipe's first comment line, which says what it trains."""
    for line in (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def find_recipe(config: str | None) -> str | None:
    """Map a ``--config`` value to a YAML file: an existing path, or a packaged recipe's name.

    A value that names an existing file is used as is; a bare name such as
    ``sd_r``, ``sd-r`` or ``sd_r.yaml`` is looked up among the packaged recipes;
    any other path is returned unchanged (loading it reports the missing file).

    Args:
        config: The ``--config`` value, or None (no config file).

    Returns:
        The path to load, or None when ``config`` is None.

    Raises:
        FileNotFoundError: If ``config`` is a bare name that is neither a file nor a
            packaged recipe; the message lists the recipes.

    Example:
        >>> Path(find_recipe("sd-r")).name
        'sd_r.yaml'

    """
    if config is None or Path(config).expanduser().is_file():
        return config
    if "/" in config or "\\" in config:
        return config
    name = config.removesuffix(".yaml").removesuffix(".yml").lower().replace("-", "_")
    packaged = RECIPES_DIR / f"{name}.yaml"
    if packaged.is_file():
        return str(packaged)
    msg = (
        f"--config {config!r} is neither a file nor a packaged recipe. Packaged recipes: "
        f"{', '.join(recipe_names())} (see `divconq distill --list-recipes`); or pass the "
        "path of a YAML file of DistillConfig fields."
    )
    raise FileNotFoundError(msg)


def resolve_recipe_paths(config: DistillConfig) -> DistillConfig:
    """Find a recipe's ``init_adapter`` wherever the package is installed.

    The repository's recipes name the shipped adapter by its path in a checkout
    (``langchain_divconq/local/adapters/gsm8k-decomposer``). When that path does
    not exist from the working directory, it is looked up under the folder that
    holds the installed package, then as a packaged adapter name
    (``gsm8k-decomposer``); a path found nowhere is left for training to report.

    Example:
        >>> from langchain_divconq.training.config import DistillConfig
        >>> cfg = DistillConfig(init_adapter="gsm8k-decomposer")
        >>> Path(resolve_recipe_paths(cfg).init_adapter).name
        'gsm8k-decomposer'

    """
    given = config.init_adapter
    if not given or Path(given).expanduser().exists():
        return config
    candidates = [] if Path(given).is_absolute() else [_PACKAGE_PARENT / given]
    from langchain_divconq.local.loaders import resolve_adapter

    packaged = resolve_adapter(given)
    if packaged is not None:
        candidates.append(packaged)
    for candidate in candidates:
        if candidate.is_dir():
            return dataclasses.replace(config, init_adapter=str(candidate))
    return config


class _ListRecipes(argparse.Action):
    """``--list-recipes``: print the packaged recipes and exit, like ``--version``."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        lines = [f"{name:<20} {_describe(name)}" for name in recipe_names()]
        lines.append(f"(files in {RECIPES_DIR}; use one with --config NAME)")
        print("\n".join(lines))  # a listing asked for goes to stdout (parser.exit writes stderr)
        parser.exit(0)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--list-recipes`` to a ``distill`` parser."""
    parser.add_argument(
        "--list-recipes",
        action=_ListRecipes,
        help="list the packaged recipes that --config accepts by name, and exit",
    )
