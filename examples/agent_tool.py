"""The chain as a tool of a LangChain agent.

    pip install 'langchain-divconq[openai]' langchain
    OPENAI_API_KEY=sk-... python examples/agent_tool.py

The agent decides when a question needs careful multi-step reasoning and hands it
to the divide-or-conquer chain, whose tool schema (question, context) comes from
the chain's input type.
"""

import os

from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

from langchain_divconq import create_divconq_chain
from langchain_divconq.local import load_decomposer


def main() -> None:
    if not os.environ.get("OPENAI_API_KEY"):
        raise SystemExit("Set OPENAI_API_KEY to run the agent example.")
    llm = ChatOpenAI(model="gpt-4o-mini", temperature=0)
    chain = create_divconq_chain(load_decomposer(), llm)
    reasoner = chain.as_tool(
        name="multi_step_reasoner",
        description="Solve a multi-step math or reasoning question. Returns sub-questions, "
        "the worked solution and the final answer.",
    )
    agent = create_agent(
        model=llm,
        tools=[reasoner],
        system_prompt="Use multi_step_reasoner for any word problem; report its answer.",
    )
    result = agent.invoke(
        {
            "messages": [
                {
                    "role": "user",
                    "content": "James writes a 3-page letter to 2 different friends twice a "
                    "week. How many pages does he write a year?",
                }
            ]
        }
    )
    print(result["messages"][-1].content)


if __name__ == "__main__":
    main()
