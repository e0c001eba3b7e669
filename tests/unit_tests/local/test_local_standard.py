"""LangChain's standard chat-model test suites, run on ChatLocalModel with the tiny model.

Both suites run offline: the "integration" suite needs no server here, because
the model runs in-process (see tiny.py for the tiny model). Capabilities the
local model does not have are switched off through the suites' own ``has_*`` /
``supports_*`` properties, so those tests skip with the suite's reason:

- tool calling, tool choice, structured output, JSON mode: not supported (a
  135M decomposer does not call tools; ``bind_tools`` raises NotImplementedError);
- image / audio / PDF / video inputs: text only;
- per-call ``model=`` overrides: one ChatLocalModel wraps one loaded model.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_divconq.local import ChatLocalModel
from tests.unit_tests.tiny import TINY_MODEL_NAME, build_tiny_model_and_tokenizer


class _LocalParams:
    @property
    def chat_model_class(self) -> type[ChatLocalModel]:
        return ChatLocalModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        model, tokenizer = build_tiny_model_and_tokenizer()
        return {
            "model": model,
            "tokenizer": tokenizer,
            "model_name": TINY_MODEL_NAME,
        }

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The suites' own standard parameters (timeout, max_retries and, in the unit
        # suite, api_key) as they are; only fewer tokens, to keep it fast.
        return {**super().standard_chat_model_params, "max_tokens": 16}  # type: ignore[misc]

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatLocalModelUnit(_LocalParams, ChatModelUnitTests):
    """The standard unit suite."""


class TestChatLocalModelIntegration(_LocalParams, ChatModelIntegrationTests):
    """The standard integration suite, in-process and offline."""
