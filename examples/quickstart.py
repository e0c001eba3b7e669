"""Quickstart, fully offline: the embedded decomposer and the embedded model as the solver.

    python examples/quickstart.py

The first run converts the embedded SmolLM2 GGUF file once (about 30 s); later
runs load the cached copy in about a second.
"""

from langchain_divconq import TraceRecorder, create_divconq_chain
from langchain_divconq.local import load_decomposer, load_local_model

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
    "babysitting. How much did she earn?",
]


def main() -> None:
    decomposer = load_decomposer()  # the shipped distilled adapter when one is packaged
    solver = load_local_model(max_tokens=256)  # swap for ChatOpenAI(...) in real use
    chain = create_divconq_chain(decomposer, solver)

    result = chain.invoke(QUESTIONS[0])
    print("sub-questions:", result["sub_questions"])
    print("answer:", result["answer"])

    # batch() runs each stage as one batched generate call on the local models.
    for out in chain.batch(QUESTIONS):
        print(f"- {out['question'][:50]}... -> {out['answer']}")

    # Streaming: sub-questions first, then the solver's text as it is generated.
    for chunk in chain.stream(QUESTIONS[1]):
        if "sub_questions" in chunk:
            print("plan:", chunk["sub_questions"])
        print(chunk.get("solution", ""), end="", flush=True)
    print()

    # Record the runs for distillation (see examples/collect_traces.py).
    recorder = TraceRecorder("quickstart-traces.jsonl")
    chain.invoke(QUESTIONS[0], {"callbacks": [recorder], "metadata": {"reference": "72"}})
    print("trace written to quickstart-traces.jsonl")


if __name__ == "__main__":
    main()
