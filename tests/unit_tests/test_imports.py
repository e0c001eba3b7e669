"""The package imports light, keeps a pinned public API, and keeps its architecture.

- Each part's ``__all__`` is pinned: changing one is a decision, not an accident.
- Old flat module paths (``langchain_divconq.store``...) still import, give the
  same objects as their new homes and warn with a ``DeprecationWarning`` naming them.
- The architecture rules of DESIGN.md are checked on the source with ``ast``: a
  small top level, no import cycles, and the arrows that must not exist.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import langchain_divconq
from langchain_divconq._moved import MOVED_MODULES

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "langchain_divconq"

EXPECTED_ALL = [
    "DivConqChain",
    "TraceRecorder",
    "__version__",
    "create_divconq_chain",
    "create_single_stage_chain",
    "extract_answer",
    "parse_sub_questions",
]

EXPECTED_PART_ALL: dict[str, list[str]] = {
    "local": [
        "DEFAULT_ADAPTER_DIR",
        "ChatLocalModel",
        "GenerationParams",
        "GenerationResult",
        "cut_text",
        "load_decomposer",
        "load_local_model",
    ],
    "tracing": [
        "REDACTED",
        "SCHEMA_VERSION",
        "BadRecord",
        "BadRecordError",
        "ImportResult",
        "JsonlTraceStore",
        "MemoryTraceStore",
        "NodeCall",
        "SqliteTraceStore",
        "TokenUsage",
        "Trace",
        "TraceRecorder",
        "TraceStore",
        "import_file",
        "open_store",
        "scrub_secrets",
    ],
    "evaluation": [
        "EvalRecord",
        "EvalResult",
        "ModelPrice",
        "PriceTable",
        "evaluate",
        "load_records",
        "percentile",
        "price_record",
        "summarize",
    ],
    "serving": ["RequestBatcher", "RequestParams", "create_app"],
    "cli": ["add_data_dir_argument", "add_model_arguments", "build_chain", "main"],
    "training": [
        "METADATA_FILE",
        "VARIANTS",
        "DistillConfig",
        "build_dataset",
        "distill",
        "read_metadata",
        "select_examples",
        "with_gold_answer",
    ],
}

EXPECTED_MOVED: dict[str, tuple[str, ...]] = {
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

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    return set(out.stdout.split())


def test_import_package_does_not_import_heavy_libraries() -> None:
    loaded = _modules_after("import langchain_divconq")
    assert not [m for m in HEAVY if m in loaded]
    assert "langchain_divconq.local.chat_model" not in loaded


def test_import_cli_and_local_module_stay_light() -> None:
    # local.py imports torch lazily, inside the functions that need it.
    loaded = _modules_after(
        "import langchain_divconq.cli.router, langchain_divconq.local.chat_model"
    )
    assert not [m for m in HEAVY if m in loaded]


def test_public_api_is_pinned() -> None:
    assert sorted(langchain_divconq.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert getattr(langchain_divconq, name) is not None


@pytest.mark.parametrize("part", sorted(EXPECTED_PART_ALL))
def test_part_api_is_pinned(part: str) -> None:
    module = importlib.import_module(f"langchain_divconq.{part}")
    assert sorted(module.__all__) == sorted(EXPECTED_PART_ALL[part])
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_unknown_attribute_is_a_clear_error() -> None:
    try:
        langchain_divconq.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_decoding_modules_pin_their_api() -> None:
    from langchain_divconq.local.engine import generation, prompt_cache, speculation, stopping

    assert sorted(prompt_cache.__all__) == ["PromptCache", "prompt_cache_for"]
    assert speculation.__all__ == ["DraftTuner"]
    assert set(stopping.__all__) <= set(generation.__all__)  # re-exported for callers
    assert "generate_greedy" in generation.__all__ and "DraftKind" in generation.__all__
    loaded = _modules_after(
        "import langchain_divconq.local.engine.generation, "
        "langchain_divconq.local.engine.prompt_cache, langchain_divconq.local.engine.speculation"
    )
    assert not [m for m in HEAVY if m in loaded]  # torch only once decoding starts


# ------------------------------------------------------------------ old paths
def test_moved_modules_table_is_pinned() -> None:
    assert MOVED_MODULES == EXPECTED_MOVED
    for targets in MOVED_MODULES.values():
        for target in targets:
            assert (PACKAGE / f"{target.replace('.', '/')}.py").is_file(), target


# Runs in a fresh interpreter: a module imported earlier in this process would be
# taken from sys.modules and its warning would never show.
_OLD_PATHS_PROBE = """
import importlib, json, sys, warnings
from langchain_divconq._moved import MOVED_MODULES

report = {}
for old, targets in MOVED_MODULES.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"langchain_divconq.{old}")
    homes = [importlib.import_module(f"langchain_divconq.{t}") for t in targets]
    different = []
    for name in module.__all__:
        home = next(h for h in homes if hasattr(h, name))
        if getattr(module, name) is not getattr(home, name):
            different.append(name)
    report[old] = {
        "warnings": [
            str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
        ],
        "names": len(module.__all__),
        "different": different,
    }
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def old_paths() -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-c", _OLD_PATHS_PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=300,
    )
    report: dict[str, dict[str, object]] = json.loads(out.stdout.splitlines()[-1])
    return report


@pytest.mark.parametrize("old", sorted(EXPECTED_MOVED))
def test_old_path_imports_warns_and_gives_the_same_objects(
    old: str, old_paths: dict[str, dict[str, object]]
) -> None:
    result = old_paths[old]
    messages = result["warnings"]
    assert isinstance(messages, list) and len(messages) == 1
    for target in EXPECTED_MOVED[old]:
        assert f"langchain_divconq.{target}" in messages[0]
    assert result["names"]  # the stand-in exposes the new homes' public names...
    assert result["different"] == []  # ...as the very same objects


def test_old_paths_give_the_new_objects_in_this_process() -> None:
    with pytest.warns(DeprecationWarning):
        pairs = [
            ("store", "tracing.store", "open_store"),
            ("generation", "local.engine.generation", "generate_greedy"),
            ("embedded", "local.embedded", "embedded_model_path"),
            ("server", "serving.app", "create_app"),
            ("specs", "model_specs", "build_solver"),
            ("trace", "tracing.trace", "Trace"),
            ("quality", "evaluation.quality", "decomposition_quality"),
            ("interop", "tracing.importers", "import_gsm8k_socratic"),
        ]
        for old, new, name in pairs:
            before = sys.modules.pop(f"langchain_divconq.{old}", None)
            try:
                legacy = importlib.import_module(f"langchain_divconq.{old}")
            finally:
                if before is not None:
                    sys.modules[f"langchain_divconq.{old}"] = before
            current = importlib.import_module(f"langchain_divconq.{new}")
            assert getattr(legacy, name) is getattr(current, name), old


# ---------------------------------------------------------------- architecture
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _owner(dotted: str) -> str:
    """The package module that ``dotted`` names, or its nearest enclosing one ("" if none)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted


def _imported(name: str, path: Path) -> set[str]:
    """Package modules ``name`` imports anywhere in its source (functions included).

    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module,
    and as importing ``pkg`` (its ``__init__``) otherwise. Parents a dotted import
    runs on the way are not edges: they would make every package a cycle.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_owner(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else _owner(base))
    found.discard(name)
    found.discard("")
    return found


GRAPH: dict[str, set[str]] = {name: _imported(name, path) for name, path in MODULES.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as ``[a, b, ..., a]``, or None when the graph is acyclic."""
    state: dict[str, str] = {}  # "open" while on the depth-first path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_sees_imports() -> None:
    # Guards the checks below against passing on an empty graph.
    assert "langchain_divconq.prompts" in GRAPH["langchain_divconq.chain"]
    assert "langchain_divconq.local.chat_model" in GRAPH["langchain_divconq.local"]
    # An import inside a function counts too (the CLI imports its parts lazily).
    assert any(
        m.startswith("langchain_divconq.serving") for m in GRAPH["langchain_divconq.cli.serve"]
    )


def test_at_most_eight_python_files_at_the_top_level() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


def test_no_import_cycles() -> None:
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _edges(source: str, target: str) -> Iterator[str]:
    for name, imported in sorted(GRAPH.items()):
        if name == source or name.startswith(f"{source}."):
            for dep in sorted(imported):
                if dep == target or dep.startswith(f"{target}."):
                    yield f"{name} -> {dep}"


def test_only_training_and_cli_import_training() -> None:
    root = "langchain_divconq"
    offenders = [
        edge
        for edge in _edges(root, f"{root}.training")
        if not edge.startswith((f"{root}.training", f"{root}.cli"))
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("serving", "cli"),
        ("chain", "local"),
        ("tasks", "chain"),
    ],
)
def test_forbidden_arrows(source: str, target: str) -> None:
    assert list(_edges(f"langchain_divconq.{source}", f"langchain_divconq.{target}")) == []


def test_class_names_are_unique_across_the_package() -> None:
    where: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(name)
    assert {cls: mods for cls, mods in where.items() if len(mods) > 1} == {}


def test_tests_have_one_fake_chat_model() -> None:
    # One scripted fake (tests/unit_tests/fakes.py) with options; tests subclass it or
    # langchain-core's fakes, never BaseChatModel itself.
    tests = ROOT / "tests"
    direct = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if bases & {"BaseChatModel", "SimpleChatModel"}:
                    direct.append(f"{path.relative_to(tests)}:{node.name}")
    assert direct == ["unit_tests/fakes.py:ScriptedChatModel"]
