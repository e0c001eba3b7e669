"""Serving: an OpenAI-compatible HTTP app over any chat model, with a request batcher.

Needs the ``serve`` extra for FastAPI and uvicorn (imported when the app is built).

Example:
    >>> from langchain_divconq.serving import create_app
    >>> app = create_app(load_decomposer(), model_id="divconq-decomposer")  # doctest: +SKIP

"""

from langchain_divconq.serving.app import create_app
from langchain_divconq.serving.batcher import RequestBatcher, RequestParams

__all__ = ["RequestBatcher", "RequestParams", "create_app"]
