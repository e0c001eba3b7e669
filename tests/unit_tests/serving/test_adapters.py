"""Several adapters behind one server: chosen by ``model``, batched apart, added at run time."""

from __future__ import annotations

import asyncio
import copy
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_divconq.cli import main
from langchain_divconq.cli.serve import adapter_specs, startup_line
from langchain_divconq.serving.app import create_app
from tests.unit_tests.fakes import running_server, served_model

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

KEY = "test-key-123"
SYSTEM = "Write sub-questions, one per line."


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def _write_adapter(model: Any, folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(copy.deepcopy(model), lora).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(
    tiny_model_and_tokenizer: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A tiny base folder and two different LoRA adapters over it."""
    model, tok = tiny_model_and_tokenizer
    root = tmp_path_factory.mktemp("adapters")
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return {
        "base": root / "base",
        "a": _write_adapter(model, root / "adapter-a", seed=1),
        "b": _write_adapter(model, root / "adapter-b", seed=2),
        "cache": root / "cache",
    }


@pytest.fixture(scope="module")
def loaded(folders: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """Adapter a (the default) and adapter b sharing a's unchanged tensors, and the loader."""
    from langchain_divconq.local import load_decomposer

    saved = os.environ.get("DIVCONQ_CACHE")
    os.environ["DIVCONQ_CACHE"] = str(folders["cache"])  # merged copies go under tmp

    def load(adapter: str, share_with: Any = None) -> Any:
        return load_decomposer(
            folders["base"], adapter, device="cpu", max_tokens=6, share_with=share_with
        )

    a = load(str(folders["a"]))
    b = load(str(folders["b"]), share_with=a)
    try:
        yield {"a": a, "b": b, "loader": lambda path: load(path, share_with=a)}
    finally:
        if saved is None:
            os.environ.pop("DIVCONQ_CACHE", None)
        else:
            os.environ["DIVCONQ_CACHE"] = saved


def _expected(model: Any, text: str) -> str:
    return str(model.invoke([SystemMessage(SYSTEM), HumanMessage(text)], max_tokens=6).content)


def _post(url: str, path: str, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


# ----------------------------------------------------------------- memory sharing
def test_a_second_adapter_shares_the_tensors_neither_adapter_changes(
    loaded: dict[str, Any], folders: dict[str, Path]
) -> None:
    from langchain_divconq.local import load_decomposer

    a, b = loaded["a"].model, loaded["b"].model
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    # The adapters change q_proj and v_proj; embeddings, k/o projections, MLPs, norms are shared.
    shared = {n for n in pa if pa[n].data_ptr() == pb[n].data_ptr()}
    assert "model.embed_tokens.weight" in shared
    assert "model.layers.0.self_attn.k_proj.weight" in shared
    assert "model.layers.0.mlp.down_proj.weight" in shared
    assert not any("q_proj" in n or "v_proj" in n for n in shared)
    own_bytes = sum(p.numel() * p.element_size() for n, p in pb.items() if n not in shared)
    all_bytes = sum(p.numel() * p.element_size() for p in b.parameters())
    assert own_bytes < all_bytes / 5  # what one more adapter costs: its changed tensors
    # Sharing does not change what b computes.
    alone = load_decomposer(folders["base"], str(folders["b"]), device="cpu", max_tokens=6)
    for name, tensor in alone.model.state_dict().items():
        assert torch.equal(b.state_dict()[name], tensor), name


# ----------------------------------------------------------------- one server
def test_each_request_gets_the_adapter_it_names_batched_per_adapter(
    loaded: dict[str, Any],
) -> None:
    a, b = loaded["a"], loaded["b"]
    questions = [f"Question {i}: how many eggs?" for i in range(6)]
    want_a = [_expected(a, q) for q in questions]
    want_b = [_expected(b, q) for q in questions]
    assert want_a != want_b  # the two adapters answer differently
    app = create_app(a, model_id="sd-a", adapters={"sd-b": b}, max_batch=16, max_wait_ms=50)
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["sd-a", "sd-b"]
        assert client.models.retrieve("sd-b").id == "sd-b"
        with pytest.raises(openai.NotFoundError, match="sd-a"):
            client.chat.completions.create(model="sd-c", messages=_ask("x"), max_tokens=6)
        aclient = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)

        async def run() -> list[Any]:
            calls = [
                aclient.chat.completions.create(model=name, messages=_ask(q), max_tokens=6)
                for q in questions
                for name in ("sd-a", "sd-b")
            ]
            return await asyncio.gather(*calls)

        replies = asyncio.run(run())
        default = client.chat.completions.create(
            model="default", messages=_ask(questions[0]), max_tokens=6
        )
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
    got = [r.choices[0].message.content for r in replies]
    assert got[0::2] == want_a and got[1::2] == want_b
    assert {r.model for r in replies[1::2]} == {"sd-b"}
    assert default.choices[0].message.content == want_a[0] and default.model == "sd-a"
    for name in ("sd-a", "sd-b"):
        stats = app.state.models.get(name).batcher.stats
        assert stats.largest_batch > 1  # each adapter's requests batch together
    assert health["models"]["sd-b"]["requests"] == 6
    assert health["requests"] == 13


def test_adapters_are_loaded_and_unloaded_at_run_time(
    loaded: dict[str, Any], folders: dict[str, Path]
) -> None:
    a, b = loaded["a"], loaded["b"]
    app = create_app(a, model_id="sd-a", api_key=KEY, adapter_loader=loaded["loader"])
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="new", messages=_ask("x"), max_tokens=6)
        reply = _post(
            url, "/load_lora_adapter", {"lora_name": "new", "lora_path": str(folders["b"])}
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["id"] == "new" and reply.json()["parent"] == "sd-a"
        assert [m.id for m in client.models.list().data] == ["sd-a", "new"]
        answer = client.chat.completions.create(model="new", messages=_ask("Why?"), max_tokens=6)
        assert answer.choices[0].message.content == _expected(b, "Why?")
        # Clear 4xx errors: a name in use, a bad folder, a bad name, no key, unknown names.
        dup = _post(url, "/load_lora_adapter", {"lora_name": "new", "lora_path": str(folders["a"])})
        assert dup.status_code == 409 and dup.json()["error"]["param"] == "lora_name"
        missing = folders["base"].parent / "no-such-adapter"
        bad = _post(url, "/load_lora_adapter", {"lora_name": "x", "lora_path": str(missing)})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "lora_path"
        assert "adapter_config.json" in bad.json()["error"]["message"]
        name = _post(url, "/load_lora_adapter", {"lora_name": "default", "lora_path": "x"})
        assert name.status_code == 400 and name.json()["error"]["param"] == "lora_name"
        body = _post(url, "/load_lora_adapter", {"lora_name": "y"})
        assert body.status_code == 400 and body.json()["error"]["param"] == "lora_path"
        nokey = _post(url, "/load_lora_adapter", {"lora_name": "z", "lora_path": "x"}, key=None)
        assert nokey.status_code == 401
        assert _post(url, "/unload_lora_adapter", {"lora_name": "nope"}).status_code == 404
        assert _post(url, "/unload_lora_adapter", {"lora_name": "sd-a"}).status_code == 400
        gone = _post(url, "/unload_lora_adapter", {"lora_name": "new"})
        assert gone.status_code == 200 and gone.json()["deleted"] is True
        assert [m.id for m in client.models.list().data] == ["sd-a"]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="new", messages=_ask("x"), max_tokens=6)


def test_run_time_adapters_need_a_key_or_the_flag(loaded: dict[str, Any]) -> None:
    app = create_app(loaded["a"], model_id="sd-a", adapter_loader=loaded["loader"])
    with running_server(app) as url:
        reply = _post(url, "/load_lora_adapter", {"lora_name": "c", "lora_path": "x"}, key=None)
        assert reply.status_code == 403
        assert "--api-key" in reply.json()["error"]["message"]
    remote = create_app(served_model(), model_id="m", api_key=KEY)  # no local base: no loader
    with running_server(remote) as url:
        reply = _post(url, "/load_lora_adapter", {"lora_name": "c", "lora_path": "x"})
        assert reply.status_code == 501


# ----------------------------------------------------------------- the command
def test_adapter_specs() -> None:
    assert adapter_specs(None, "m") == [("m", "default")]
    assert adapter_specs(["a=./x", "b=none"], "m") == [("a", "./x"), ("b", "none")]
    assert adapter_specs(["./runs/a=b"], "m") == [("m", "./runs/a=b")]  # a path, not a name
    with pytest.raises(ValueError, match="Only one --adapter"):
        adapter_specs(["./x", "./y"], "m")
    with pytest.raises(ValueError, match="own name"):
        adapter_specs(["a=./x", "a=./y"], "m")
    with pytest.raises(ValueError, match="cannot name"):
        adapter_specs(["default=./x"], "m")


def test_two_unnamed_adapters_is_a_clean_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--adapter", "./x", "--adapter", "./y"]) == 2
    assert "Only one --adapter" in capsys.readouterr().err


def test_startup_line_names_url_models_and_key_but_never_the_key() -> None:
    app = create_app(served_model(), model_id="m", adapters={"sd-r": served_model()}, api_key=KEY)
    sock = SimpleNamespace(getsockname=lambda: ("127.0.0.1", 8123))
    server = SimpleNamespace(
        config=SimpleNamespace(host="127.0.0.1", port=0),
        servers=[SimpleNamespace(sockets=[sock])],
    )
    line = startup_line(app, server)
    assert "http://127.0.0.1:8123/v1" in line
    assert "m (also 'default'), sd-r" in line
    assert "API key required" in line and KEY not in line
    open_app = create_app(served_model(), model_id="m")
    assert "no API key" in startup_line(open_app, server)


@pytest.mark.slow  # a subprocess that imports torch: about 20 s on 2 busy cores
def test_divconq_serve_prints_its_url_and_serves_two_adapters(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "langchain_divconq.cli", "serve", "--port", "0"]
    command += ["--decomposer", str(folders["base"]), "--adapter", str(folders["a"])]
    command += ["--adapter", f"sd-b={folders['b']}", "--model-id", "sd-a"]
    command += ["--threads", "1", "--device", "cpu"]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[3]),
        "DIVCONQ_CACHE": str(tmp_path / "cache"),
        "DIVCONQ_API_KEY": KEY,
    }
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 180
        line = ""
        while time.monotonic() < deadline and "listening on" not in line:
            line = process.stderr.readline()
            assert line or process.poll() is None, "divconq serve exited early"
        match = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert match, line
        assert "sd-a (also 'default'), sd-b" in line and "API key required" in line
        assert KEY not in line
        client = openai.OpenAI(base_url=match.group(0), api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["sd-a", "sd-b"]
        reply = client.chat.completions.create(model="sd-b", messages=_ask("Hi"), max_tokens=4)
        assert reply.model == "sd-b"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_unloading_lets_running_requests_finish() -> None:
    import threading

    app = create_app(
        served_model(),
        model_id="m",
        api_key=KEY,
        adapter_loader=lambda path: served_model(batch_delay=1.0),
    )
    with running_server(app) as url:
        assert _post(url, "/load_lora_adapter", {"lora_name": "slow", "lora_path": "p"}).is_success
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        replies: list[Any] = []
        running = threading.Thread(
            target=lambda: replies.append(
                client.chat.completions.create(model="slow", messages=_ask("Hi"))
            )
        )
        running.start()
        time.sleep(0.3)  # the request is in its batch now
        assert _post(url, "/unload_lora_adapter", {"lora_name": "slow"}).status_code == 200
        running.join(timeout=30)
        assert replies and replies[0].model == "slow"  # answered, not failed
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="slow", messages=_ask("Hi"))


def test_adapter_load_errors_never_echo_a_secret() -> None:
    secret = "sk-proj-abcdefghijklmnopqrstuvwx0123"

    def broken(path: str) -> Any:
        if path == "bad":
            msg = f"config at https://user:{secret}@host/x is not an adapter"
            raise ValueError(msg)
        msg = f"Authorization: Bearer {secret}"
        raise RuntimeError(msg)

    app = create_app(served_model(), model_id="m", api_key=KEY, adapter_loader=broken)
    with running_server(app) as url:
        for path, status in (("bad", 400), ("crash", 500)):
            reply = _post(url, "/load_lora_adapter", {"lora_name": "c", "lora_path": path})
            assert reply.status_code == status
            message = reply.json()["error"]["message"]
            assert secret not in message
            assert "adapter" in message  # still says what failed
