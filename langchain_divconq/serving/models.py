"""The models one ``divconq serve`` answers for: one base, several LoRA adapters, by name.

Each served model has its own :class:`~langchain_divconq.serving.batcher.RequestBatcher`,
so requests for different adapters never share a batch and each adapter's requests
batch together. A request picks its model by ``model``; ``"default"`` is the first one.
Adapters can be added and removed while the server runs
(:meth:`ServedModels.load` / :meth:`ServedModels.unload`, behind
``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``, the names vLLM uses);
the loader that turns a folder into a chat model is the caller's (``divconq serve``
merges the adapter into a copy that shares the base tensors the adapter leaves alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel

from langchain_divconq.secrets import scrub_text
from langchain_divconq.serving.batcher import RequestBatcher
from langchain_divconq.serving.protocol import APIError

__all__ = ["DEFAULT_ALIAS", "AdapterLoader", "ServedModel", "ServedModels", "check_model_name"]

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = "default"
"""A model name the server always accepts: its first model (what specs.py sends)."""

AdapterLoader = Callable[[str], BaseChatModel]
"""Turns an adapter folder (or a packaged adapter's name) into a chat model; raises
``ValueError`` for a folder that is not a loadable adapter."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_DRAIN_POLL_S = 0.05


def check_model_name(name: str) -> str:
    """Return ``name`` if it can name a served model.

    Raises:
        ValueError: For a name with other characters than letters, digits and
            ``._:@+-``, longer than 128 characters, or ``"default"``.

    Example:
        >>> check_model_name("sd-r")
        'sd-r'

    """
    if name == DEFAULT_ALIAS or not _NAME.fullmatch(name):
        msg = (
            f"{name!r} cannot name a served model: use 1-128 letters, digits and ._:@+- "
            f"(starting with a letter or digit), and not {DEFAULT_ALIAS!r}."
        )
        raise ValueError(msg)
    return name


@dataclass
class ServedModel:
    """One model behind the server, with its own batcher."""

    name: str
    """The id clients send as ``model`` and ``/v1/models`` lists."""
    model: BaseChatModel
    """The chat model answering for ``name``."""
    batcher: RequestBatcher
    """The batcher of this model alone."""
    path: str | None = None
    """The adapter folder it was loaded from, when known (``/v1/models`` shows it as ``root``)."""
    created: int = field(default_factory=lambda: int(time.time()))
    """When it was added (Unix seconds)."""


class ServedModels:
    """The served models by name, their batchers, and run-time adapter loading.

    Args:
        make_batcher: Builds the batcher of a newly added model.
        loader: Loads an adapter folder as a chat model; None: no run-time loading.

    """

    def __init__(
        self,
        make_batcher: Callable[[BaseChatModel], RequestBatcher],
        loader: AdapterLoader | None = None,
    ) -> None:
        self._make_batcher = make_batcher
        self.loader = loader
        self._models: dict[str, ServedModel] = {}
        self._draining: dict[asyncio.Task[None], ServedModel] = {}
        self._update = asyncio.Lock()
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ lookup
    @property
    def default(self) -> ServedModel:
        """The first model: it also answers to ``"default"``."""
        return next(iter(self._models.values()))

    def names(self) -> list[str]:
        """Return the served ids, the default first."""
        return list(self._models)

    def __iter__(self) -> Any:
        return iter(list(self._models.values()))

    def get(self, name: str, param: str = "model") -> ServedModel:
        """Return the model for ``name`` (or the default for ``"default"``).

        Raises:
            APIError: 404 ``model_not_found`` naming the served ids.

        """
        if name == DEFAULT_ALIAS and self._models:
            return self.default
        served = self._models.get(name)
        if served is None:
            msg = (
                f"The model {name!r} does not exist; this server serves "
                f"{', '.join(repr(n) for n in self._models)} (and {DEFAULT_ALIAS!r})."
            )
            raise APIError(404, msg, param=param, code="model_not_found")
        return served

    # ----------------------------------------------------------------- changes
    def add(self, name: str, model: BaseChatModel, *, path: str | None = None) -> ServedModel:
        """Add a model before the server starts (a started server uses :meth:`load`)."""
        if name in self._models:
            msg = f"Two served models are named {name!r}; give each adapter its own name."
            raise ValueError(msg)
        served = ServedModel(name, model, self._make_batcher(model), path)
        self._models[name] = served
        return served

    async def load(self, name: str, path: str) -> ServedModel:
        """Load the adapter at ``path`` and serve it as ``name`` from now on.

        Raises:
            APIError: 400 for a bad name or a folder that is not an adapter, 409 for a
                name in use, 501 when this server has no loader, 500 when loading fails.

        """
        try:
            check_model_name(name)
        except ValueError as exc:
            raise APIError(400, str(exc), param="lora_name", code="invalid_value") from exc
        if self.loader is None:
            msg = "This server cannot load adapters (it does not run a local base model)."
            raise APIError(501, msg, param="lora_path", code="not_supported")
        loader = self.loader
        async with self._update:  # one load at a time: no two models under one name
            if name in self._models:
                msg = (
                    f"A model named {name!r} is already served; unload it first "
                    "(POST /v1/unload_lora_adapter) or pick another lora_name."
                )
                raise APIError(409, msg, param="lora_name", code="model_exists")
            try:
                # Merging an adapter takes seconds: keep the event loop serving.
                model = await asyncio.to_thread(loader, path)
            except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
                # Exception texts can quote a config or a URL: no secret leaves in a body.
                msg = scrub_text(f"Could not load the adapter at lora_path {path!r}: {exc}")
                raise APIError(400, msg, param="lora_path", code="invalid_adapter") from exc
            except Exception as exc:
                logger.exception("Loading the adapter %s failed", path)
                msg = scrub_text(f"Loading the adapter failed: {type(exc).__name__}: {exc}")
                raise APIError(500, msg, type="server_error", code="load_failed") from exc
            served = self.add(name, model, path=path)
            if self._started:
                await served.batcher.start()
            logger.warning("Serving adapter %s as %r", path, name)
            return served

    async def unload(self, name: str) -> ServedModel:
        """Stop serving ``name``: new requests get 404, running ones finish first.

        Raises:
            APIError: 404 for an unknown name, 400 for the default model.

        """
        async with self._update:
            served = self.get(name, "lora_name")
            if served is self.default:
                msg = f"{served.name!r} is this server's default model and cannot be unloaded."
                raise APIError(400, msg, param="lora_name", code="invalid_value")
            del self._models[served.name]
            served.batcher.stop_admitting()
            task = asyncio.get_running_loop().create_task(self._close_when_idle(served))
            self._draining[task] = served
            task.add_done_callback(lambda done: self._draining.pop(done, None))
            logger.warning("Stopped serving %r", served.name)
            return served

    async def _close_when_idle(self, served: ServedModel) -> None:
        while served.batcher.pending:
            await asyncio.sleep(_DRAIN_POLL_S)
        await served.batcher.close()

    # --------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start every batcher (the app's start-up)."""
        self._started = True
        for served in self:
            await served.batcher.start()

    async def close(self) -> None:
        """Close every batcher, the ones still draining after an unload too."""
        for task, unloaded in list(self._draining.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await unloaded.batcher.close()
        for served in self:
            await served.batcher.close()

    def stop_admitting(self) -> None:
        """Refuse new requests on every model (the start of a graceful shutdown)."""
        for served in [*self, *self._draining.values()]:
            served.batcher.stop_admitting()

    def abort(self, message: str) -> None:
        """Fail every admitted request of every model (the end of the grace period)."""
        for served in [*self, *self._draining.values()]:
            served.batcher.abort(message)

    # ------------------------------------------------------------------ views
    def card(self, served: ServedModel) -> dict[str, Any]:
        """Return the ``/v1/models`` entry of ``served`` (an adapter names its ``parent``)."""
        card: dict[str, Any] = {
            "id": served.name,
            "object": "model",
            "created": served.created,
            "owned_by": "divconq",
        }
        if served is not self.default and served.path is not None:
            card["root"], card["parent"] = served.path, self.default.name
        return card

    def health(self) -> dict[str, Any]:
        """Counters over every model, and per model under ``models``."""
        per = {
            s.name: {
                "pending": s.batcher.pending,
                "requests": s.batcher.stats.requests,
                "batches": s.batcher.stats.batches,
                "largest_batch": s.batcher.stats.largest_batch,
                "rejected": s.batcher.stats.rejected,
                "streams": s.batcher.stats.streams,
            }
            for s in self
        }
        total = {
            key: sum(m[key] for m in per.values())
            for key in ("pending", "requests", "batches", "rejected", "streams")
        }
        total["largest_batch"] = max((m["largest_batch"] for m in per.values()), default=0)
        return {**total, "models": per}
