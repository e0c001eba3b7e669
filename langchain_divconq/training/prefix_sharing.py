"""Compute the prompt prefix a batch shares once: the system prompt of every decomposer example.

Every decomposer example starts with the same chat-template tokens (the system prompt:
about 70 of the ~150 tokens of a GSM8K example). The loss covers the completion only, so
those tokens matter only through the keys and values they leave for later positions, and
those are the same for every row. :func:`prefix_shared_loss` runs the shared prefix once
(batch 1), repeats its key/value cache over the batch, and runs only each row's suffix:
the same loss and gradients as the plain forward pass (up to float rounding; tested), for
about ``(B - 1) * P`` fewer token positions per batch of ``B`` rows sharing ``P`` tokens.
Gradients flow through the repeated cache into the prefix's LoRA weights as usual.

:func:`sft_trainer_class` returns TRL's ``SFTTrainer`` with that loss; batches without a
long enough shared prefix, calls that want the model's outputs, and models wrapped for
distributed training (several processes under ``torchrun``/``accelerate launch``) take
TRL's own path.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIN_SHARED_PREFIX", "prefix_shared_loss", "sft_trainer_class", "shared_prefix_length"]

MIN_SHARED_PREFIX = 8
"""Shorter shared prefixes are not worth a second forward call."""


def shared_prefix_length(input_ids: Any, attention_mask: Any, labels: Any) -> int:
    """Tokens at the start that every row has, identical, unmasked and outside the loss.

    The result leaves at least one prompt token per row to the suffix, so the suffix's
    first label (predicted from the prefix's last position) is never a loss position.

    Example:
        >>> import torch
        >>> ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 2]])
        >>> mask = torch.ones_like(ids)
        >>> labels = torch.tensor([[-100, -100, -100, -100, 9], [-100, -100, -100, 1, 2]])
        >>> shared_prefix_length(ids, mask, labels)
        2

    """
    import torch

    same = (input_ids == input_ids[:1]).all(dim=0)
    usable = same & (attention_mask == 1).all(dim=0) & (labels == -100).all(dim=0)
    if not bool(usable[0]):
        return 0
    # The first position where a row differs, is padded or is scored ends the prefix.
    stops = torch.nonzero(~usable)
    end = int(stops[0]) if len(stops) else int(usable.numel())
    return max(0, min(end - 1, int(usable.numel()) - 2))


def decoder_parts(model: Any) -> tuple[Any, Any]:
    """Return the decoder stack and the LM head of a (peft-wrapped) causal LM."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(inner, inner.base_model_prefix, None) or inner.model
    return backbone, inner.get_output_embeddings()


def _cache_argument(backbone: Any) -> str:
    """Return the KV-cache argument: ``cache`` (transformers 5.2x) or ``past_key_values``."""
    import inspect

    parameters = inspect.signature(type(backbone).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def prefix_shared_loss(
    model: Any, inputs: dict[str, Any], prefix: int, num_items_in_batch: Any = None
) -> Any:
    """Return the completion loss of a batch whose rows share their first ``prefix`` tokens.

    Args:
        model: A causal LM (optionally peft-wrapped) in training mode.
        inputs: ``input_ids``, ``attention_mask`` and ``labels`` (-100 where not scored),
            right-padded.
        prefix: Shared tokens, from :func:`shared_prefix_length` (>= 1).
        num_items_in_batch: Scored tokens across gradient accumulation (the Trainer's
            normaliser); None divides by this batch's scored tokens.

    Returns:
        The summed token cross-entropy divided by the number of scored tokens.

    """
    import torch
    from torch.nn import functional

    input_ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    rows = input_ids.shape[0]
    backbone, head = decoder_parts(model)
    key = _cache_argument(backbone)
    out = backbone(input_ids=input_ids[:1, :prefix], use_cache=True)
    cache = getattr(out, key, None) or out.past_key_values
    cache.batch_repeat_interleave(rows)
    hidden = backbone(
        input_ids=input_ids[:, prefix:], attention_mask=mask, use_cache=False, **{key: cache}
    ).last_hidden_state
    targets = labels[:, prefix + 1 :]
    scored = targets != -100
    logits = head(hidden[:, :-1][scored])
    total = functional.cross_entropy(logits.float(), targets[scored], reduction="sum")
    count = scored.sum() if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


_CLASS: list[Any] = []


def sft_trainer_class() -> Any:
    """TRL's ``SFTTrainer`` with :func:`prefix_shared_loss` for batches that share a prefix."""
    if _CLASS:
        return _CLASS[0]
    from trl import SFTTrainer

    class PrefixSharingSFTTrainer(SFTTrainer):
        """``SFTTrainer`` that runs a batch's shared prompt prefix once."""

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            prefix = 0
            plain = return_outputs or "attention_mask" not in inputs or "labels" not in inputs
            # Under DDP/FSDP the forward must go through the wrapper (its gradient hooks):
            # a wrapped model takes TRL's own loss.
            plain = plain or hasattr(model, "module")
            if not plain and not getattr(self.args, "gradient_checkpointing", False):
                prefix = shared_prefix_length(
                    inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
                )
            if prefix < MIN_SHARED_PREFIX or inputs["input_ids"].shape[0] < 2:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = prefix_shared_loss(model, inputs, prefix, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            if model.training:
                self._total_train_tokens += int(inputs["attention_mask"].sum())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    _CLASS.append(PrefixSharingSFTTrainer)
    return PrefixSharingSFTTrainer
