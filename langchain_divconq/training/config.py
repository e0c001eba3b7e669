"""``DistillConfig``: every knob of a LoRA distillation run, from Python, YAML or flags.

One dataclass is the single definition: ``__post_init__`` validates it, and
:func:`add_config_arguments` derives the command-line flags from its fields, so
a YAML recipe and ``--flag`` overrides can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "DistillConfig",
    "add_config_arguments",
    "config_from_args",
]

DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
"""Attention and MLP projections of Llama-style models (SmolLM2 included)."""

_DEVICES = ("auto", "cpu", "cuda", "mps")
_SAVE_DTYPES = ("float32", "float16", "bfloat16")
_VARIANTS = ("SD-T", "SD-R", "SE-T", "SE-A")


@dataclass
class DistillConfig:
    """Settings of one LoRA distillation run.

    Example:
        >>> cfg = DistillConfig(output_dir="runs/sd-t", lora_r=8, max_steps=100)
        >>> cfg.lora_alpha
        16

    """

    output_dir: str = "runs/distill"
    """Folder that receives checkpoints and the final adapter."""
    base_model: str | None = None
    """Base model folder or hub id; None is the embedded SmolLM2-135M-Instruct."""
    dataset: str | None = None
    """A folder written by ``divconq dataset`` (used by the CLI; Python callers pass a dataset)."""
    variant: str = "SD-T"
    """Distillation variant, recorded in the metadata: SD-T, SD-R, SE-T or SE-A."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int | None = None
    """LoRA scaling numerator; None means 2 * lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch (peft's default, 0). Any dropout makes peft run the LoRA
    branch on a dropped-out copy of every projection's input: 0.05 trained about 1.4x slower
    on CPU (``benchmarks/train.py``)."""
    init_adapter: str | None = None
    """Start the LoRA weights from this adapter folder (same rank and target modules), e.g.
    to continue a shipped adapter on new data; a checkpoint being resumed takes precedence."""
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    """Module names that get LoRA weights (or ["all-linear"])."""
    learning_rate: float = 2e-4
    """Peak learning rate of AdamW."""
    num_epochs: float = 1.0
    """Passes over the training split (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 trains for num_epochs."""
    batch_size: int = 8
    """Examples per device per step."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients add up before one optimizer update."""
    max_length: int = 512
    """Longest tokenized prompt + completion; longer ones are truncated."""
    warmup_ratio: float = 0.05
    """Share of the steps spent warming the learning rate up (when warmup_steps is 0)."""
    warmup_steps: int = 0
    """Warm-up steps; > 0 overrides warmup_ratio, so a longer run shares a shorter one's start."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule (any transformers scheduler name)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the LoRA initialisation and the data order."""
    device: str = "auto"
    """auto, cpu, cuda or mps; auto picks CUDA when present."""
    bf16: bool | None = None
    """Mixed precision in bfloat16; None means on where the hardware has it natively.

    That is CUDA with bf16 support, or a CPU with AVX512-BF16/AMX-BF16 instructions (about
    1.9x faster than fp32 there, see ``benchmarks/train.py``); elsewhere fp32.
    """
    gradient_checkpointing: bool = False
    """Recompute activations to save memory (slower; several times slower on CPU)."""
    group_by_length: bool = True
    """Batch examples of similar length together (transformers' length-grouped sampler):
    random batches of GSM8K SD-T examples are 23% padding at batch 4 and 36% at 16."""
    padding_free: bool = False
    """Concatenate each batch into one unpadded row (TRL ``padding_free``). Needs a
    flash-attention ``attn_implementation``: with transformers' sdpa and eager attention
    the concatenated examples attend to each other (tested), so it is refused there."""
    share_prompt_prefix: bool = True
    """Run the prompt prefix that all rows of a batch share (the decomposer's system prompt,
    about 70 tokens) once per batch and repeat its key/value cache over the rows: the same
    loss and gradients, fewer token positions (``training.prefix_sharing``). Off with
    gradient checkpointing or padding_free, where TRL's own loss runs."""
    compile_layers: bool = False
    """Run each decoder layer's MLP and norms through ``torch.compile`` (dynamic shapes),
    which fuses their element-wise work, with the same losses. On a 2-core AVX512 CPU it
    gave 1.02x on the general recipe and -1% to +15% in ``benchmarks/train.py --compile``;
    the first step pays the compilation, and on CPU torch needs a C++ compiler for it,
    hence off by default."""
    attn_implementation: str | None = None
    """transformers ``attn_implementation`` for the base model (sdpa, eager,
    flash_attention_2, ...); None keeps transformers' default."""
    num_threads: int | None = None
    """torch CPU threads; None leaves torch's default."""
    logging_steps: int = 10
    """Log the training loss every this many steps."""
    eval_steps: int | None = None
    """Evaluate every this many steps; None evaluates once per epoch."""
    save_steps: int = 50
    """Write a resumable checkpoint every this many steps."""
    save_total_limit: int = 2
    """Checkpoints kept on disk."""
    resume: bool = True
    """Resume from the newest checkpoint in output_dir when there is one."""
    save_dtype: str = "float32"
    """dtype of the saved adapter weights (float16 halves the file)."""

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        self._check_types()
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        self.target_modules = list(self.target_modules)
        self._validate()

    def _check_types(self) -> None:
        """Reject a value of the wrong type by field name (YAML gives 'eight' as a string)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _type_error(hints[f.name], value)
            if expected is not None:
                flag = "--" + f.name.replace("_", "-")
                msg = (
                    f"DistillConfig.{f.name} must be {expected}, got {value!r} "
                    f"({type(value).__name__}). Fix the YAML key {f.name!r} or the {flag} flag."
                )
                raise ValueError(msg)
            takes_float = hints[f.name] is float or float in typing.get_args(hints[f.name])
            if takes_float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))

    def _fail(self, name: str, expected: str) -> None:
        value = getattr(self, name)
        flag = "--" + name.replace("_", "-")
        msg = (
            f"DistillConfig.{name} must be {expected}, got {value!r}. "
            f"Fix the YAML key {name!r} or the {flag} flag."
        )
        raise ValueError(msg)

    def _validate(self) -> None:
        if not self.output_dir:
            self._fail("output_dir", "a non-empty folder path")
        positive = ("lora_r", "lora_alpha", "batch_size", "gradient_accumulation_steps")
        for name in (*positive, "max_length", "logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                self._fail(name, "an integer >= 1")
        if not 0 <= self.lora_dropout < 1:
            self._fail("lora_dropout", "in [0, 1)")
        if not self.target_modules:
            self._fail("target_modules", "a non-empty list of module names")
        if not 0 < self.learning_rate < 1:
            self._fail("learning_rate", "in (0, 1)")
        if self.max_steps == 0 or self.max_steps < -1:
            self._fail("max_steps", "-1 (train for num_epochs) or an integer >= 1")
        if self.max_steps == -1 and self.num_epochs <= 0:
            self._fail("num_epochs", "> 0 when max_steps is -1")
        if not 0 <= self.warmup_ratio < 1:
            self._fail("warmup_ratio", "in [0, 1)")
        if self.warmup_steps < 0:
            self._fail("warmup_steps", ">= 0")
        if self.weight_decay < 0:
            self._fail("weight_decay", ">= 0")
        if self.device not in _DEVICES:
            self._fail("device", f"one of {_DEVICES}")
        if self.num_threads is not None and self.num_threads < 1:
            self._fail("num_threads", "an integer >= 1 or unset")
        if self.eval_steps is not None and self.eval_steps < 1:
            self._fail("eval_steps", "an integer >= 1 or unset")
        if self.save_dtype not in _SAVE_DTYPES:
            self._fail("save_dtype", f"one of {_SAVE_DTYPES}")
        if self.variant not in _VARIANTS:
            self._fail("variant", f"one of {_VARIANTS}")
        if self.padding_free and "flash" not in (self.attn_implementation or ""):
            self._fail(
                "padding_free",
                "false unless attn_implementation is a flash-attention kernel (e.g. "
                f"flash_attention_2; got attn_implementation={self.attn_implementation!r})",
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Build a config from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"Unknown DistillConfig field(s) {unknown}; known fields: {sorted(known)}."
            raise ValueError(msg)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> DistillConfig:
        r"""Load a config from a YAML file of ``field: value`` pairs.

        Example:
            >>> import tempfile, pathlib
            >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
            >>> _ = p.write_text("lora_r: 4\\nmax_steps: 10\\n")
            >>> DistillConfig.from_yaml(p).lora_r
            4

        """
        import yaml

        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            msg = (
                f"{path}: not valid YAML at {where}: {problem}. Each line of a recipe is "
                "'field: value' (e.g. 'lora_r: 8'); lists are '[a, b]'."
            )
            raise ValueError(msg) from exc
        if not isinstance(data, dict):
            msg = f"{path}: expected a mapping of DistillConfig fields, got {type(data).__name__}."
            raise ValueError(msg)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_error(annotation: Any, value: Any) -> str | None:
    """Describe what ``annotation`` expects when ``value`` does not fit it, else None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        found = _type_error(inner[0], value)
        return None if found is None else f"{found} or null"
    if typing.get_origin(annotation) is list:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return None
        return "a list of strings"
    if annotation is bool:
        return None if isinstance(value, bool) else _TYPE_NAMES[bool]
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else _TYPE_NAMES[int]
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else _TYPE_NAMES[float]
    if annotation is str:
        return None if isinstance(value, str) else _TYPE_NAMES[str]
    return None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    msg = f"expected true or false, got {text!r}"
    raise argparse.ArgumentTypeError(msg)


def _optional(kind: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null", "") else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _field_parser(annotation: Any) -> Any:
    """Map a field's type annotation to an argparse ``type`` callable."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _optional(_field_parser(args[0]))
    if origin is list:
        return lambda text: [m.strip() for m in text.split(",") if m.strip()]
    if annotation is bool:
        return _parse_bool
    return annotation


def _field_docs() -> dict[str, str]:
    """Read each field's docstring (the string right after it) from the class source."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(DistillConfig)))
    except (OSError, TypeError):
        return docs
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = after.value.value
    return docs


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per :class:`DistillConfig` field (default: not given).

    Flags that are not given stay ``None`` in the namespace, so
    :func:`config_from_args` can tell an override from a default.
    """
    hints = typing.get_type_hints(DistillConfig)
    docs = _field_docs()
    group = parser.add_argument_group("training settings (override the --config file)")
    for f in dataclasses.fields(DistillConfig):
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(
            flag,
            dest=f.name,
            type=_field_parser(hints[f.name]),
            default=None,
            metavar=f.name.upper(),
            # argparse %-formats help text; a literal "%" in a field doc must be doubled.
            help=docs.get(f.name, "").replace("%", "%%"),
        )


def config_from_args(args: argparse.Namespace, path: str | None = None) -> DistillConfig:
    """Merge a YAML file (if any) with the flags that were given, flags winning."""
    data: dict[str, Any] = {}
    if path:
        data = DistillConfig.from_yaml(path).to_dict()
    for f in dataclasses.fields(DistillConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            data[f.name] = value
    return DistillConfig.from_dict(data)
