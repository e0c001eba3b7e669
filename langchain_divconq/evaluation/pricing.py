"""An editable price table: US dollars per million input and output tokens, per model.

API models are priced from :data:`DEFAULT_PRICES` (list prices; edit or extend
them, e.g. from a JSON file with :meth:`PriceTable.from_json`). Local models
(run by this library or llama.cpp) cost nothing by default; set
``usd_per_million_per_billion_params`` to price them by parameter count instead,
as the paper did for its open models (the count is read from the model name,
e.g. ``SmolLM2-135M`` -> 0.135 B, or given in ``parameters_billion``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, Field

__all__ = ["DEFAULT_PRICES", "LOCAL_PROVIDERS", "ModelPrice", "PriceTable"]


class ModelPrice(BaseModel):
    """Price of one model."""

    input: float = Field(ge=0, description="USD per 1M input (prompt) tokens.")
    output: float = Field(ge=0, description="USD per 1M output (generated) tokens.")


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-3.5-turbo": ModelPrice(input=0.50, output=1.50),
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60),
    "gpt-4o": ModelPrice(input=2.50, output=10.00),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00),
}
"""OpenAI list prices (USD per 1M tokens) at the time of writing; check before relying on them."""

LOCAL_PROVIDERS = frozenset({"divconq", "localmodel", "local", "llamacpp", "huggingface", "ollama"})
"""``ls_provider`` values (LangChain's tracing metadata) that mean "runs on your machine"."""

_PARAMS = re.compile(r"(\d+(?:\.\d+)?)\s*([mb])\b", re.IGNORECASE)


def _billions_from_name(name: str) -> float | None:
    for match in _PARAMS.finditer(name.replace("_", "-").replace("-", " ")):
        value = float(match.group(1))
        return value / 1000 if match.group(2).lower() == "m" else value
    return None


class PriceTable(BaseModel):
    """Look up the dollar cost of token counts per model.

    Model names match exactly, then case-insensitively, then by the longest
    known prefix (``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``).

    Example:
        >>> table = PriceTable()
        >>> table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000)
        0.75
        >>> table.cost("SmolLM2-135M-Instruct", 500, 100, provider="divconq")
        0.0

    """

    prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per 1M input/output tokens, by model name.",
    )
    local_providers: set[str] = Field(
        default_factory=lambda: set(LOCAL_PROVIDERS),
        description="Providers whose models run locally (priced at zero or per parameter).",
    )
    usd_per_million_per_billion_params: float | None = Field(
        default=None,
        description="Price local models by size: USD per 1M tokens per 1B parameters "
        "(None: local models are free).",
    )
    parameters_billion: dict[str, float] = Field(
        default_factory=dict,
        description="Parameter counts (billions) of local models whose name does not say it.",
    )

    @classmethod
    def from_json(cls, path: str | Path) -> PriceTable:
        """Load a table: ``{"prices": {"model": {"input": 0.5, "output": 1.5}}, ...}``.

        A file holding only a ``{"model": {...}}`` mapping is read as ``prices``; its
        entries are added to (and override) :data:`DEFAULT_PRICES`.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            msg = f"Price file {path} must hold a JSON object, got {type(data).__name__}."
            raise ValueError(msg)
        if "prices" not in data:
            data = {"prices": data}
        prices = {
            **DEFAULT_PRICES,
            **{k: ModelPrice.model_validate(v) for k, v in data["prices"].items()},
        }
        return cls.model_validate({**data, "prices": prices})

    def price(self, model: str | None, provider: str | None = None) -> ModelPrice | None:
        """Return the price of a model, or None when the table cannot price it."""
        if model:
            if model in self.prices:
                return self.prices[model]
            lowered = {k.lower(): v for k, v in self.prices.items()}
            if model.lower() in lowered:
                return lowered[model.lower()]
            base = model.lower().rsplit("/", 1)[-1]
            prefixes = [k for k in lowered if base.startswith(k)]
            if prefixes:
                return lowered[max(prefixes, key=len)]
        if (provider or "").lower() in self.local_providers:
            return self._local_price(model or "")
        return None

    def _local_price(self, model: str) -> ModelPrice:
        rate = self.usd_per_million_per_billion_params
        if rate is None:
            return ModelPrice(input=0.0, output=0.0)
        billions = self.parameters_billion.get(model) or _billions_from_name(model)
        if billions is None:
            msg = (
                f"Cannot price local model {model!r} per parameter: its name gives no size. "
                "Add it to PriceTable.parameters_billion."
            )
            raise ValueError(msg)
        per_million = rate * billions
        return ModelPrice(input=per_million, output=per_million)

    def cost(
        self,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        *,
        provider: str | None = None,
    ) -> float | None:
        """Return the USD cost of the token counts, or None when the model is unpriced."""
        price = self.price(model, provider)
        if price is None:
            return None
        return (input_tokens * price.input + output_tokens * price.output) / 1_000_000
