"""A local decomposer with an OpenAI solver (or any OpenAI-compatible endpoint).

pip install 'langchain-divconq[openai]'
OPENAI_API_KEY=sk-... python examples/openai_solver.py
# or a local server (vLLM, llama.cpp, divconq serve):
OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python examples/openai_solver.py
"""

import os

from langchain_core.runnables import ConfigurableField
from langchain_openai import ChatOpenAI

from langchain_divconq import create_divconq_chain
from langchain_divconq.local import load_decomposer

QUESTION = (
    "A robe takes 2 bolts of blue fiber and half that much white fiber. "
    "How many bolts in total does it take?"
)


def main() -> None:
    base_url = os.environ.get("OPENAI_BASE_URL")
    if not (os.environ.get("OPENAI_API_KEY") or base_url):
        raise SystemExit("Set OPENAI_API_KEY, or OPENAI_BASE_URL for a local server.")
    api_key = os.environ.get("OPENAI_API_KEY", "not-needed")
    cheap = ChatOpenAI(model="gpt-4o-mini", temperature=0, base_url=base_url, api_key=api_key)
    strong = ChatOpenAI(model="gpt-4o", temperature=0, base_url=base_url, api_key=api_key)
    # The solver is swappable at run time through LangChain's configurable alternatives.
    solver = cheap.configurable_alternatives(
        ConfigurableField(id="solver"), default_key="mini", full=strong
    )
    chain = create_divconq_chain(load_decomposer(), solver)
    print(chain.invoke(QUESTION))
    print(chain.with_config(configurable={"solver": "full"}).invoke(QUESTION)["answer"])


if __name__ == "__main__":
    main()
