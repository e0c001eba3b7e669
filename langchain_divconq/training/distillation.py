"""``distill``: train a LoRA adapter on a prompt/completion dataset with TRL's ``SFTTrainer``.

The loss covers the completion only (the sub-questions or the solution), never
the prompt. The run writes resumable checkpoints into ``output_dir`` and, at the
end, the adapter itself (``adapter_config.json``, ``adapter_model.safetensors``)
plus :data:`METADATA_FILE` describing how it was made. Under
``accelerate launch`` the same call trains on several GPUs: the Trainer reads
the distributed setup from the environment.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_divconq.jsonl import JsonlAppender
from langchain_divconq.training.config import DistillConfig
from langchain_divconq.training.dataset import dataset_hash

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

__all__ = [
    "METADATA_FILE",
    "cpu_has_native_bf16",
    "distill",
    "read_metadata",
    "write_adapter_files",
]

logger = logging.getLogger(__name__)

METADATA_FILE = "divconq_adapter.json"
"""Name of the metadata file written next to the adapter weights."""

_TRAIN_LOG = "train_log.jsonl"


def _resolve_device(config: DistillConfig) -> tuple[str, bool]:
    """Return ``(device, bf16)`` for the run."""
    import torch

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        msg = "DistillConfig.device is 'cuda' but torch sees no CUDA device; use device='cpu'."
        raise ValueError(msg)
    bf16 = config.bf16
    if bf16 is None:
        if device == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
        else:
            bf16 = device == "cpu" and cpu_has_native_bf16()
    return device, bool(bf16)


def cpu_has_native_bf16() -> bool:
    """Return True when the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16).

    There, bf16 autocast trained about 1.9x faster than fp32 (``benchmarks/train.py``);
    without them bf16 is emulated and slower, so fp32 stays the default.
    """
    import os

    # oneDNN capped below AVX512-BF16 (how an AVX2-only CPU is emulated) has no native bf16.
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and not cap.startswith(("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10", "ALL")):
        return False
    from langchain_divconq.local.backends import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def _splits(dataset: Dataset | DatasetDict) -> tuple[Dataset, Dataset | None]:
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            msg = (
                f"The dataset has no 'train' split (splits: {list(dataset)}); "
                "build it with build_dataset."
            )
            raise ValueError(msg)
        train, val = dataset["train"], dataset.get("validation")
    else:
        train, val = dataset, None
    for name, split in (("train", train), ("validation", val)):
        if split is None:
            continue
        missing = {"prompt", "completion"} - set(split.column_names)
        if missing:
            msg = (
                f"The {name} split lacks column(s) {sorted(missing)} (has {split.column_names}); "
                "distill needs TRL's prompt/completion format from build_dataset."
            )
            raise ValueError(msg)
    if len(train) == 0:
        msg = "The train split is empty; nothing to distill."
        raise ValueError(msg)
    keep = ["prompt", "completion"]
    return train.select_columns(keep), (val.select_columns(keep) if val is not None else None)


def _sft_config(config: DistillConfig, device: str, bf16: bool, has_eval: bool) -> Any:
    from trl import SFTConfig

    checkpointing: dict[str, Any] = _checkpointing(SFTConfig, config.gradient_checkpointing)
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if config.eval_steps else "epoch"
    return SFTConfig(
        output_dir=config.output_dir,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        warmup_steps=config.warmup_steps or config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        # TRL defaults both to True; on CPU they make LoRA training 5-10x slower.
        bf16=bf16,
        **checkpointing,
        use_cpu=device == "cpu",
        completion_only_loss=True,
        padding_free=config.padding_free,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        logging_steps=config.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        dataloader_pin_memory=device == "cuda",
    )


def _checkpointing(cls: Any, enabled: bool) -> dict[str, bool]:
    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing.
    fields = getattr(cls, "__dataclass_fields__", {})
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    return {name: enabled}


def _log_callback(path: Path) -> Any:
    """Build a TrainerCallback that appends every log record to ``path`` and logs eval losses."""
    from transformers import TrainerCallback

    class LogToFile(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not logs or not state.is_world_process_zero:
                return
            record = {"step": state.global_step, "time": round(time.time(), 1), **logs}
            JsonlAppender(path).append_json([record])
            if "eval_loss" in logs:
                logger.warning(
                    "epoch %.2f step %d: eval_loss %.4f",
                    state.epoch or 0.0,
                    state.global_step,
                    logs["eval_loss"],
                )

    return LogToFile()


def _save_adapter(model: Any, out: Path, config: DistillConfig, base_name: str) -> None:
    """Save the LoRA weights in ``config.save_dtype`` and point the config at the base."""
    model.save_pretrained(str(out))
    write_adapter_files(out, out, save_dtype=config.save_dtype, base_model=base_name)


def write_adapter_files(source: Path, dest: Path, *, save_dtype: str, base_model: str) -> None:
    """Write ``source``'s adapter weights and config into ``dest`` as an adapter ships.

    The weights are cast to ``save_dtype`` and the config names ``base_model`` (a hub id,
    never a local path). ``dest`` may be ``source`` (a folder just saved by peft) or
    another folder (a chosen checkpoint being shipped).
    """
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, save_dtype)
    weights = load_file(str(source / "adapter_model.safetensors"))
    tensors = {k: v.to(dtype).contiguous() for k, v in weights.items()}
    save_file(tensors, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    data = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base_model
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    (dest / "adapter_config.json").write_text(text, encoding="utf-8")


def _compile_layers(model: Any) -> None:
    """Compile each decoder layer's MLP and norms in place (peft and saving see the same modules).

    Whole layers would recompile once per layer (each passes its own ``layer_idx`` to the KV
    cache) and hit dynamo's recompile limit; the MLPs and norms share one graph each.
    """
    from langchain_divconq.training.prefix_sharing import decoder_parts

    backbone, _ = decoder_parts(model)
    for layer in backbone.layers:
        for name in ("mlp", "input_layernorm", "post_attention_layernorm"):
            part = getattr(layer, name, None)
            if part is not None:
                part.compile(dynamic=True)


def distill(config: DistillConfig, dataset: Dataset | DatasetDict) -> Path:
    """Train a LoRA adapter on ``dataset`` and return the folder holding it.

    Args:
        config: The run's settings.
        dataset: A ``DatasetDict`` from :func:`~langchain_divconq.training.build_dataset`
            (its ``validation`` split, if any, gives the eval loss), or a bare train ``Dataset``.

    Returns:
        ``Path(config.output_dir)``, holding ``adapter_config.json``,
        ``adapter_model.safetensors`` and :data:`METADATA_FILE`.

    Example:
        >>> cfg = DistillConfig(output_dir="runs/sd-r", max_steps=200)  # doctest: +SKIP
        >>> folder = distill(cfg, build_dataset(store, variant="SD-R"))  # doctest: +SKIP

    """
    try:
        import torch
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTTrainer
    except ImportError as exc:
        msg = "distill needs the 'train' extra: pip install 'langchain-divconq[train]'."
        raise ImportError(msg) from exc

    from langchain_divconq.local.embedded import EMBEDDED_HUB_ID, resolve_base_model

    train, val = _splits(dataset)
    device, bf16 = _resolve_device(config)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    base = resolve_base_model(config.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # fp32 master weights; with bf16=True the Trainer autocasts the forward pass.
    attention = {"attn_implementation": config.attn_implementation}
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.float32, **(attention if config.attn_implementation else {})
    )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha or 2 * config.lora_r,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    trainer_class = SFTTrainer
    if config.share_prompt_prefix and not (config.padding_free or config.gradient_checkpointing):
        from langchain_divconq.training.prefix_sharing import sft_trainer_class

        trainer_class = sft_trainer_class()
    trainer = trainer_class(
        model=model,
        args=_sft_config(config, device, bf16, has_eval=val is not None),
        train_dataset=train,
        eval_dataset=val,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[_log_callback(out / _TRAIN_LOG)],
    )
    if config.compile_layers:
        _compile_layers(trainer.model)
    checkpoint = _checkpoint_to_resume(out, config) if config.resume else None
    if checkpoint:
        logger.warning("Resuming from %s", checkpoint)
    elif config.init_adapter:
        _load_initial_adapter(trainer.model, Path(config.init_adapter), config)
    started = time.perf_counter()
    if checkpoint and 0 < config.max_steps <= _step_of(checkpoint):
        # The Trainer would still run one step past a checkpoint taken at max_steps.
        _restore(trainer, Path(checkpoint))
        trained = False
    else:
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trained = True
    runtime = time.perf_counter() - started
    eval_loss = None
    if val is not None:
        # The epoch-end evaluation usually just ran; evaluating again would double its cost.
        final = [
            h["eval_loss"]
            for h in trainer.state.log_history
            if "eval_loss" in h and h.get("step") == trainer.state.global_step
        ]
        eval_loss = float(final[-1] if final else trainer.evaluate()["eval_loss"])

    if not trainer.is_world_process_zero():
        return out
    base_name = EMBEDDED_HUB_ID if config.base_model in (None, "default", "embedded") else base
    _save_adapter(trainer.model, out, config, base_name)
    state = trainer.state
    # The log history is restored on resume, so these cover the whole run.
    losses = [float(h["loss"]) for h in state.log_history if "loss" in h]
    if not losses and trained:  # fewer steps than logging_steps: only the run's mean exists
        losses = [float(result.training_loss)]
    tokens = int(state.num_input_tokens_seen)
    session_tokens = 0
    if trained:
        session_tokens = tokens - int(getattr(trainer, "_initial_num_input_tokens_seen", 0) or 0)
    metadata = {
        "base_model": base_name,
        "variant": config.variant,
        "data_hash": dataset_hash(train),
        "train_examples": len(train),
        "validation_examples": len(val) if val is not None else 0,
        "global_step": int(trainer.state.global_step),
        "epochs": float(trainer.state.epoch or 0.0),
        "train_loss": sum(losses) / len(losses) if losses else None,
        "last_train_loss": losses[-1] if losses else None,
        "eval_loss": eval_loss,
        "resumed_from": checkpoint,
        "train_runtime_s": round(runtime, 1),
        "train_tokens": tokens,
        "train_tokens_per_s": (
            round(session_tokens / runtime, 1) if runtime > 0 and session_tokens > 0 else None
        ),
        "device": device if device != "cuda" else torch.cuda.get_device_name(),
        "bf16": bf16,
        "torch_threads": torch.get_num_threads(),
        "world_size": int(trainer.args.world_size),
        "platform": platform.platform(),
        "versions": _versions(),
        "config": config.to_dict(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return out


def _load_initial_adapter(model: Any, folder: Path, config: DistillConfig) -> None:
    """Copy a saved adapter's LoRA weights into the freshly wrapped model (fp16 is upcast)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from langchain_divconq.local.loaders import check_adapter_dir

    check_adapter_dir(folder)  # a clear error for a damaged folder, never a hub look-up
    saved = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if saved.get("r") != config.lora_r or set(saved.get("target_modules") or []) != set(
        config.target_modules
    ):
        msg = (
            f"init_adapter {folder} has r={saved.get('r')} on {saved.get('target_modules')}, "
            f"but the run uses r={config.lora_r} on {config.target_modules}; they must match."
        )
        raise ValueError(msg)
    result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        msg = f"init_adapter {folder} has weights the model lacks: {unexpected[:3]}..."
        raise ValueError(msg)
    logger.warning("Initialised the LoRA weights from %s", folder)


def _step_of(checkpoint: str) -> int:
    return int(Path(checkpoint).name.removeprefix("checkpoint-"))


def _restore(trainer: Any, checkpoint: Path) -> None:
    """Load a finished checkpoint's LoRA weights and trainer state without training."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    set_peft_model_state_dict(trainer.model, weights)
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))


def _checkpoint_to_resume(out: Path, config: DistillConfig) -> str | None:
    """Return the newest checkpoint not past ``max_steps`` (so a shorter rerun can finish)."""
    found = []
    for path in out.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(suffix), path))
    if config.max_steps > 0:
        found = [(step, path) for step, path in found if step <= config.max_steps]
    return str(max(found)[1]) if found else None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "langchain-divconq"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """Return the metadata :func:`distill` wrote into an adapter folder."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        msg = f"No {METADATA_FILE} in {str(folder)!r}; was the folder written by distill()?"
        raise FileNotFoundError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{path} is not valid JSON ({exc}); the adapter folder is damaged, retrain it."
        raise ValueError(msg) from exc
    if not isinstance(data, dict):
        msg = f"{path} must hold a JSON object; it holds a {type(data).__name__}."
        raise ValueError(msg)
    return data
