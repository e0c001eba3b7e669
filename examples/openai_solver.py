"""A local decomposer with an OpenAI solver, or any OpenAI-compatible server as the solver.

pip install 'langchain-divconq[local,openai]'

# OpenAI (models: gpt-4o-mini, and gpt-4o as the run-time alternative)
OPENAI_API_KEY=sk-... python examples/openai_solver.py

# a local server (divconq serve, vLLM, llama.cpp): its models are read from /v1/models
OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python examples/openai_solver.py

# or name the models (flags, or DIVCONQ_SOLVER_MODEL / DIVCONQ_STRONG_MODEL)
python examples/openai_solver.py --base-url http://127.0.0.1:8000/v1 --model decomposer
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from langchain_core.runnables import ConfigurableField
from langchain_openai import ChatOpenAI

from langchain_divconq import create_divconq_chain
from langchain_divconq.local import load_decomposer

QUESTION = (
    "A robe takes 2 bolts of blue fiber and half that much white fiber. "
    "How many bolts in total does it take?"
)
OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o")  # what api.openai.com serves; a local server does not


def served_models(base_url: str, api_key: str) -> list[str]:
    """Return the model ids an OpenAI-compatible server lists at ``/v1/models``."""
    import openai

    return [model.id for model in openai.OpenAI(base_url=base_url, api_key=api_key).models.list()]


def pick_models(
    base_url: str | None, api_key: str, model: str | None, strong: str | None
) -> tuple[str, str]:
    """Return (default solver model, alternative solver model).

    Named models win. With no name and a base URL, the server's own models are
    used (the first listed, and the second one as the alternative when there is
    one); with neither, OpenAI's.
    """
    if model and strong:
        return model, strong
    if base_url:
        listed = served_models(base_url, api_key)
        if not listed:
            raise SystemExit(f"{base_url}/models lists no model; name one with --model.")
        model = model or listed[0]
        return model, strong or (listed[1] if len(listed) > 1 else model)
    return model or OPENAI_MODELS[0], strong or OPENAI_MODELS[1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"))
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--model", default=os.environ.get("DIVCONQ_SOLVER_MODEL"))
    parser.add_argument("--strong-model", default=os.environ.get("DIVCONQ_STRONG_MODEL"))
    args = parser.parse_args(argv)
    if not (args.api_key or args.base_url):
        raise SystemExit("Set OPENAI_API_KEY, or OPENAI_BASE_URL (--base-url) for a local server.")
    api_key = args.api_key or "not-needed"  # local servers without --api-key accept any
    model, strong = pick_models(args.base_url, api_key, args.model, args.strong_model)
    print(f"solver: {model} (alternative: {strong}) at {args.base_url or 'api.openai.com'}")

    def chat(name: str) -> ChatOpenAI:
        return ChatOpenAI(model=name, temperature=0, base_url=args.base_url, api_key=api_key)

    # The solver is swappable at run time through LangChain's configurable alternatives.
    solver = chat(model).configurable_alternatives(
        ConfigurableField(id="solver"), default_key="default", strong=chat(strong)
    )
    chain = create_divconq_chain(load_decomposer(), solver)
    result = chain.invoke(args.question)
    print("sub-questions:", result["sub_questions"])
    print("answer:", result["answer"])
    strong_result = chain.with_config(configurable={"solver": "strong"}).invoke(args.question)
    print(f"answer with {strong}:", strong_result["answer"])


if __name__ == "__main__":
    main()
