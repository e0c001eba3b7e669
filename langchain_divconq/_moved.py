"""Old import paths of modules that moved into the part folders, kept working with a warning.

Until 0.2 the package was flat (``langchain_divconq.store``, ``.generation``...).
Importing one of those names now gives a small stand-in module whose attributes
come from the new homes, and warns once with a ``DeprecationWarning`` naming
them. One table instead of a file per old name keeps the top level showing the
architecture.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["MOVED_MODULES", "install"]

_ROOT = "langchain_divconq"

MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "batcher": ("serving.batcher",),
    "collect": ("tracing.collect",),
    "cpu_kernels": ("local.engine.cpu_kernels",),
    "draft_model": ("local.engine.draft_model",),
    "embedded": ("local.embedded",),
    "eval_cli": ("cli.eval",),
    "generation": ("local.engine.generation", "local.engine.rows"),
    "interop": ("tracing.importers", "training.exporters"),
    "local_decoding": ("local.decoding",),
    "openai_protocol": ("serving.protocol",),
    "pricing": ("evaluation.pricing",),
    "prompt_cache": ("local.engine.prompt_cache",),
    "quality": ("evaluation.quality",),
    "report": ("evaluation.report",),
    "scoring": ("tracing.scoring",),
    "server": ("serving.app",),
    "specs": ("model_specs",),
    "speculation": ("local.engine.speculation",),
    "stopping": ("local.engine.stopping",),
    "store": ("tracing.store",),
    "trace": ("tracing.trace",),
    "usage": ("tracing.usage",),
}
"""Old module name (under ``langchain_divconq``) -> its new module(s), first match wins."""


def _stand_in(name: str, targets: Sequence[str]) -> types.ModuleType:
    modules = [importlib.import_module(f"{_ROOT}.{t}") for t in targets]
    module = types.ModuleType(name, f"Moved: import from {', '.join(m.__name__ for m in modules)}.")

    def __getattr__(attr: str) -> Any:
        for target in modules:
            if hasattr(target, attr):
                return getattr(target, attr)
        msg = f"module {name!r} (moved to {modules[0].__name__}) has no attribute {attr!r}"
        raise AttributeError(msg)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__all__ = [a for m in modules for a in getattr(m, "__all__", ())]  # type: ignore[attr-defined]
    return module


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        parent, _, leaf = fullname.rpartition(".")
        if parent != _ROOT or leaf not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        targets = MOVED_MODULES[spec.name.rpartition(".")[2]]
        new = ", ".join(f"{_ROOT}.{t}" for t in targets)
        warnings.warn(
            f"{spec.name} has moved to {new}; import it from there "
            "(the old path goes away in a later release).",
            DeprecationWarning,
            stacklevel=2,
        )
        return _stand_in(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (after the normal finders)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
