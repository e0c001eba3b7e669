"""The local model: ChatLocalModel, its loaders, the embedded base weights and the shipped adapters.

Importing this package is cheap (langchain-core and pydantic only); torch,
transformers and peft load when a model is loaded. The decoding engine lives in
:mod:`langchain_divconq.local.engine`.

Example:
    >>> from langchain_divconq.local import load_decomposer
    >>> decomposer = load_decomposer()  # doctest: +SKIP
    >>> decomposer.invoke("Tom has 3 apples and buys 2 more. How many now?")  # doctest: +SKIP

"""

from langchain_divconq.local.chat_model import ChatLocalModel
from langchain_divconq.local.decoding import GenerationParams, GenerationResult, cut_text
from langchain_divconq.local.loaders import DEFAULT_ADAPTER_DIR, load_decomposer, load_local_model

__all__ = [
    "DEFAULT_ADAPTER_DIR",
    "ChatLocalModel",
    "GenerationParams",
    "GenerationResult",
    "cut_text",
    "load_decomposer",
    "load_local_model",
]
