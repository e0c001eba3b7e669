"""Load benchmark for ``divconq serve``: requests/s and p50/p95 latency at 1, 8, 32 clients.

Starts the real server (``python -m langchain_divconq.cli serve``) on 127.0.0.1 twice,
side by side in one run:

- ``batched``: the default micro-batcher (``--max-batch 32``): concurrent requests
  share one generate call;
- ``unbatched``: the same server with ``--max-batch 1``, i.e. one generate call per
  request (what a plain request-per-call wrapper around ``transformers`` does).

Each client sends decomposer prompts for GSM8K test questions through the real
``openai`` async client, one request at a time, until the level's request budget is
spent. The last line printed is a JSON object with every number.

Run from the project root:

    python benchmarks/serve_load.py                    # embedded SmolLM2, base model
    python benchmarks/serve_load.py --threads 1        # one torch thread (busy machine)
    python benchmarks/serve_load.py --quick            # fewer requests
    python benchmarks/serve_load.py --decomposer PATH --adapter PATH
    python benchmarks/serve_load.py --scenario long-short --threads 1

``--scenario long-short`` measures head-of-line blocking instead, in process, through
the server's own :class:`~langchain_divconq.serving.batcher.RequestBatcher` (no HTTP):
one long request, then several short ones 0.5 s later with the same settings, and
then the same batch where the long request's client leaves after 0.5 s, followed by
one more short request. It prints each request's latency with ``isolate_rows=False``
(``before``: one cancel event per batch, answers when the whole call returns) and
``isolate_rows=True`` (``after``: per-request cancel events, each row answered when it
ends, requests join a running batch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from langchain_divconq.prompts import decomposer_messages

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
FALLBACK_QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
    "babysitting. How much did she earn?",
]


def load_questions(n: int) -> list[str]:
    if DATA.is_file():
        with DATA.open() as fh:
            questions = [
                json.loads(line)["question"] for _, line in zip(range(n), fh, strict=False)
            ]
        return questions
    return [FALLBACK_QUESTIONS[i % len(FALLBACK_QUESTIONS)] for i in range(n)]


def openai_messages(question: str) -> list[dict[str, str]]:
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [
        {"role": roles[m.type], "content": str(m.content)} for m in decomposer_messages(question)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``divconq serve`` subprocess on 127.0.0.1."""

    def __init__(self, args: argparse.Namespace, max_batch: int) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "langchain_divconq.cli", "serve"]
        command += ["--port", str(self.port), "--max-batch", str(max_batch)]
        command += ["--decomposer", args.decomposer, "--adapter", args.adapter]
        command += ["--model-id", "bench", "--max-queue", "1024"]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self.process = subprocess.Popen(command, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                msg = f"divconq serve exited with {self.process.returncode}"
                raise RuntimeError(msg)
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                msg = "divconq serve did not start within 300 s"
                raise RuntimeError(msg)
            time.sleep(0.2)

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/health", timeout=5).json())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def run_level(
    url: str, questions: list[str], clients: int, requests: int, max_tokens: int
) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    latencies: list[float] = []
    tokens = 0
    next_index = 0

    async def worker() -> None:
        nonlocal tokens, next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            reply = await client.chat.completions.create(
                model="bench",
                messages=openai_messages(questions[i % len(questions)]),  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=0,
            )
            latencies.append(time.perf_counter() - started)
            tokens += reply.usage.completion_tokens if reply.usage else 0

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    await client.close()
    return {
        "clients": clients,
        "requests": requests,
        "wall_s": round(wall, 2),
        "requests_per_s": round(requests / wall, 3),
        "completion_tokens_per_s": round(tokens / wall, 1),
        "p50_latency_s": round(statistics.median(latencies), 3),
        "p95_latency_s": round(percentile(latencies, 0.95), 3),
    }


def bench_level(
    args: argparse.Namespace, name: str, server: Server, clients: int, questions: list[str]
) -> dict[str, Any]:
    requests = max(clients, args.requests_per_client * clients)
    if clients == 1:
        requests = max(requests, args.min_serial_requests)
    before = server.health()
    result = asyncio.run(run_level(server.url, questions, clients, requests, args.max_tokens))
    after = server.health()
    result["model_batches"] = after["batches"] - before["batches"]
    result["largest_batch"] = after["largest_batch"]
    print(f"[{name}] {json.dumps(result)}", flush=True)
    return result


LONG_PROMPT = "Write a long, detailed story about a dragon who learns to bake bread."
SHORT_PROMPTS = [
    "Answer with one word: what colour is the sky on a clear day?",
    "Say hello.",
    "What is 2 + 2? Answer with the number only.",
    "Name one fruit. One word.",
]


async def _long_short_round(batcher: Any, args: argparse.Namespace) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage

    from langchain_divconq.serving.batcher import RequestParams

    params = RequestParams(temperature=0.0, max_tokens=args.max_tokens)
    shorts = SHORT_PROMPTS[: args.shorts]

    async def ask(prompt: str) -> dict[str, Any]:
        started = time.perf_counter()
        reply = await batcher.submit([HumanMessage(prompt)], params)
        usage = getattr(reply, "usage_metadata", None) or {}
        return {
            "prompt": prompt[:24],
            "latency_s": round(time.perf_counter() - started, 2),
            "tokens": usage.get("output_tokens"),
        }

    # 1. the long request runs; the short ones arrive 0.5 s later
    long = asyncio.ensure_future(ask(LONG_PROMPT))
    await asyncio.sleep(0.5)
    beside = await asyncio.gather(*(ask(p) for p in shorts))
    beside_long = await long
    # 2. one batch; the long request's client leaves after 0.5 s; one more short request
    leaving = asyncio.ensure_future(ask(LONG_PROMPT))
    together = asyncio.ensure_future(asyncio.gather(*(ask(p) for p in shorts)))
    await asyncio.sleep(0.5)
    leaving.cancel()
    shared = await together
    after_leave = await ask(shorts[0])
    return {
        "long_then_shorts": {"long": beside_long, "shorts": beside},
        "client_leaves": {"shorts": shared, "next_request": after_leave},
    }


def long_short(args: argparse.Namespace) -> None:
    """Head-of-line blocking and cancellation inside a batch, before and after #19."""
    import torch

    from langchain_divconq.local import load_local_model
    from langchain_divconq.serving.batcher import RequestBatcher

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    llm = load_local_model(
        None if args.decomposer == "default" else args.decomposer,
        adapter=None if args.adapter == "none" else args.adapter,
        max_tokens=args.max_tokens,
    )
    llm.invoke("Warm up.", max_tokens=4)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, list[Any]] = {"before": [], "after": []}
    for _ in range(args.rounds):  # interleaved, so that load changes hit both alike
        for mode in ("before", "after"):

            async def run(isolate: bool = mode == "after") -> dict[str, Any]:
                batcher = RequestBatcher(llm, max_batch=32, isolate_rows=isolate)
                await batcher.start()
                try:
                    return await _long_short_round(batcher, args)
                finally:
                    await batcher.close()

            result = asyncio.run(run())
            results[mode].append(result)
            print(f"[{mode}] {json.dumps(result)}", flush=True)
    print(
        json.dumps(
            {
                "benchmark": "serve_load long-short",
                "decomposer": args.decomposer,
                "adapter": args.adapter,
                "max_tokens": args.max_tokens,
                "threads": args.threads,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "load_average_before": load_before,
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "results": results,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["load", "long-short"], default="load")
    parser.add_argument("--shorts", type=int, default=3, help="long-short: short requests")
    parser.add_argument("--rounds", type=int, default=1, help="long-short: repetitions")
    parser.add_argument("--decomposer", default="default")
    parser.add_argument("--adapter", default="none")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="divconq serve --threads")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=1)
    parser.add_argument("--min-serial-requests", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="clients 1 and 8 only")
    parser.add_argument("--skip-unbatched", action="store_true")
    args = parser.parse_args()
    if args.scenario == "long-short":
        if args.max_tokens == parser.get_default("max_tokens"):
            args.max_tokens = 160
        long_short(args)
        return
    if args.quick:
        args.clients = [1, 8]
        args.min_serial_requests = 2
    questions = load_questions(max(args.clients) * args.requests_per_client)
    # Both servers stay up for the whole run and each level runs on one right after the
    # other, so that a change in machine load hits both sides alike (an idle server
    # costs no CPU).
    sizes = {"batched": max(args.clients)} | ({} if args.skip_unbatched else {"unbatched": 1})
    results: dict[str, Any] = {name: {"max_batch": b, "levels": []} for name, b in sizes.items()}
    load_before = [round(x, 2) for x in os.getloadavg()]
    servers: dict[str, Server] = {}
    try:
        for name, max_batch in sizes.items():
            servers[name] = Server(args, max_batch)
        for server in servers.values():  # warm-up
            asyncio.run(run_level(server.url, questions, 1, 1, args.max_tokens))
        for clients in args.clients:
            for name, server in servers.items():
                results[name]["levels"].append(bench_level(args, name, server, clients, questions))
    finally:
        for name, server in servers.items():
            results[name]["sigterm_exit_code"] = server.stop()
    summary: dict[str, Any] = {
        "benchmark": "serve_load",
        "decomposer": args.decomposer,
        "adapter": args.adapter,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    if "unbatched" in results:
        summary["speedup_requests_per_s"] = {
            str(b["clients"]): round(b["requests_per_s"] / u["requests_per_s"], 2)
            for b, u in zip(
                results["batched"]["levels"], results["unbatched"]["levels"], strict=True
            )
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
