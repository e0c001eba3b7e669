"""``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``: adapters added at run time.

The routes and bodies are vLLM's (``{"lora_name", "lora_path"}``), so scripts written
for a vLLM server work here too. Loading reads a folder on the server's disk, so
the routes answer only on a server with an API key (to key holders) or one
started with ``allow_runtime_adapters``; otherwise 403.
"""

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_divconq.serving.models import ServedModels
from langchain_divconq.serving.protocol import APIError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["LoadAdapterRequest", "UnloadAdapterRequest", "add_adapter_routes"]

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations.
_Body = TypeVar("_Body", bound=BaseModel)


class LoadAdapterRequest(BaseModel):
    """The body of ``POST /v1/load_lora_adapter``."""

    model_config = ConfigDict(strict=True, extra="ignore")

    lora_name: str = Field(description="The model id clients will send to use the adapter.")
    lora_path: str = Field(
        description="A peft adapter folder on the server, or a packaged adapter's name."
    )


class UnloadAdapterRequest(BaseModel):
    """The body of ``POST /v1/unload_lora_adapter``."""

    model_config = ConfigDict(strict=True, extra="ignore")

    lora_name: str = Field(description="The served model id to remove.")


def _parse(raw: bytes, schema: type[_Body]) -> _Body:
    try:
        data = json.loads(raw)
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        msg = f"Invalid value for '{param}': {first['msg']}."
        raise APIError(400, msg, param=param, code="invalid_value") from exc
    except (ValueError, RecursionError) as exc:
        msg = f"The request body is not valid JSON ({exc}). Send a JSON object."
        raise APIError(400, msg, code="invalid_json") from exc


def add_adapter_routes(
    app: "FastAPI",
    registry: ServedModels,
    *,
    enabled: bool,
    read_body: Callable[[Any, int], Awaitable[bytes]],
    max_body_bytes: int = 64 * 1024,
) -> None:
    """Add the two routes to ``app``; when not ``enabled`` they answer 403.

    Args:
        app: The FastAPI app.
        registry: The served models the routes change.
        enabled: Whether run-time adapter changes are allowed.
        read_body: Reads a request body up to a size (413 beyond it).
        max_body_bytes: The largest body accepted.

    """
    from fastapi import Request

    def check_enabled() -> None:
        if enabled:
            return
        if registry.loader is None:
            msg = "This server cannot load adapters (it does not run a local base model)."
            raise APIError(501, msg, code="not_supported")
        msg = (
            "Adding or removing adapters at run time is off on a server without an API key: "
            "start it with --api-key (key holders may then load adapters) or with "
            "--allow-runtime-adapters."
        )
        raise APIError(403, msg, type="permission_error", code="runtime_adapters_disabled")

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> dict[str, Any]:
        check_enabled()
        body = _parse(await read_body(request, max_body_bytes), LoadAdapterRequest)
        served = await registry.load(body.lora_name, body.lora_path)
        return registry.card(served)

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> dict[str, Any]:
        check_enabled()
        body = _parse(await read_body(request, max_body_bytes), UnloadAdapterRequest)
        served = await registry.unload(body.lora_name)
        return {"id": served.name, "object": "model", "deleted": True}
