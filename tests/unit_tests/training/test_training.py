"""Tests of the training subpackage: variants, prompt parity, LoRA distillation, config, CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableLambda

from langchain_divconq.prompts import ANSWER_MARKER, NO_DECOMPOSITION
from langchain_divconq.tracing.trace import NodeCall, Trace
from langchain_divconq.training.config import DistillConfig
from langchain_divconq.training.dataset import select_examples, with_gold_answer

pytest.importorskip("datasets")
pytest.importorskip("trl")
pytest.importorskip("peft")


def _traces() -> list[Trace]:
    return [
        Trace(
            trace_id="right",
            question="Tom has 3 bags of 4 apples. How many apples?",
            reference="12",
            sub_questions=["How many bags?", "How many apples per bag?"],
            solution="3 bags, 4 each.\nThe answer is: 12",
            answer="12",
            score=1.0,
        ),
        Trace(
            trace_id="wrong",
            question="Ann has 2 cats and 3 dogs. How many pets?",
            reference="5",
            sub_questions=["How many cats?", "How many dogs?"],
            solution="2 + 3 = 6.\nThe answer is: 6",
            answer="6",
            score=0.0,
        ),
        Trace(
            trace_id="simple",
            question="What is 2 + 2?",
            reference="4",
            decomposer=NodeCall(output=NO_DECOMPOSITION),
            sub_questions=[],
            solution="The answer is: 4",
            answer="4",
            score=1.0,
        ),
        Trace(trace_id="failed", question="Broken?", error="TimeoutError", score=None),
        Trace(
            trace_id="unscored",
            question="How far is 3 km plus 4 km?",
            sub_questions=["What is 3 + 4?"],
            solution="3 + 4 = 7\nThe answer is: 7 km",
        ),
    ]


def _ids(examples: list[dict[str, Any]]) -> list[str]:
    return [e["trace_id"] for e in examples]


def test_variants_select_the_right_traces() -> None:
    traces = _traces()
    assert _ids(select_examples(traces, variant="SD-T")) == ["right", "wrong", "simple", "unscored"]
    assert _ids(select_examples(traces, variant="SD-R")) == ["right", "simple"]
    assert _ids(select_examples(traces, variant="SE-T")) == ["right", "wrong", "simple", "unscored"]
    # SE-A needs the gold answer: the unscored trace has no reference.
    se_a = select_examples(traces, variant="SE-A")
    assert _ids(se_a) == ["right", "wrong", "simple"]
    wrong = se_a[1]["completion"][0]["content"]
    assert wrong == f"2 + 3 = 6.\n{ANSWER_MARKER} 5"
    se_t_wrong = select_examples(traces, variant="SE-T")[1]["completion"][0]["content"]
    assert se_t_wrong.endswith(f"{ANSWER_MARKER} 6")


def test_decomposer_completion_is_the_formatted_plan() -> None:
    examples = {e["trace_id"]: e for e in select_examples(_traces(), variant="SD-T")}
    assert examples["right"]["completion"] == [
        {"role": "assistant", "content": "How many bags?\nHow many apples per bag?"}
    ]
    assert examples["simple"]["completion"][0]["content"] == NO_DECOMPOSITION
    many = Trace(question="Q?", sub_questions=[f"Step {i}?" for i in range(5)])
    (only,) = select_examples([many], variant="SD-T")
    assert only["completion"][0]["content"].splitlines() == ["Step 0?", "Step 1?", "Step 2?"]


def test_solver_prompt_lists_the_sub_questions() -> None:
    (example,) = select_examples(_traces()[:1], variant="SE-T")
    assert [m["role"] for m in example["prompt"]] == ["system", "user"]
    assert "1. How many bags?\n2. How many apples per bag?" in example["prompt"][1]["content"]


def test_with_gold_answer_appends_a_marker_when_missing() -> None:
    assert with_gold_answer("It is 7.", "7") == f"It is 7.\n{ANSWER_MARKER} 7"
    text = "The answer is: 3\nWait.\nThe answer is: 6"
    assert with_gold_answer(text, "5") == "The answer is: 3\nWait.\nThe answer is: 5"


def test_dedup_and_variant_part_mismatch() -> None:
    twice = [_traces()[0], _traces()[0].model_copy(update={"trace_id": "again"})]
    assert len(select_examples(twice, variant="SD-T")) == 1
    assert len(select_examples(twice, variant="SD-T", dedup=False)) == 2
    with pytest.raises(ValueError, match="part='solver'"):
        select_examples(twice, variant="SD-R", part="solver")
    with pytest.raises(ValueError, match="Unknown variant 'SD-X'"):
        select_examples(twice, variant="SD-X")


def test_build_dataset_splits_by_question() -> None:
    from langchain_divconq.training import build_dataset

    traces = [
        Trace(question=f"Question {i}?", sub_questions=[f"Sub {i}?"], score=1.0) for i in range(40)
    ]
    ds = build_dataset(traces, variant="SD-R", val_fraction=0.1, seed=3)
    assert len(ds["train"]) == 36 and len(ds["validation"]) == 4
    train_q = set(ds["train"]["question"])
    assert not train_q & set(ds["validation"]["question"])
    assert set(build_dataset(traces, val_fraction=0)) == {"train"}
    with pytest.raises(ValueError, match="No trace qualifies for variant 'SD-R'"):
        build_dataset([Trace(question="Q?", sub_questions=["A?"], score=0.0)], variant="SD-R")


def test_dataset_prompt_is_what_the_chain_sends(tiny_chat_model: Any) -> None:
    from langchain_divconq.chain import create_divconq_chain
    from langchain_divconq.local.chat_model import _chat_dicts

    sent: list[list[BaseMessage]] = []

    def decomposer(messages: list[BaseMessage]) -> AIMessage:
        sent.append(messages)
        return AIMessage(content="How many bags?")

    chain = create_divconq_chain(
        RunnableLambda(decomposer), FakeListChatModel(responses=["The answer is: 12"])
    )
    trace = _traces()[0]
    chain.invoke({"question": trace.question})
    (example,) = select_examples([trace], variant="SD-T")
    assert example["prompt"] == _chat_dicts(sent[0])
    # The token ids match too: TRL tokenizes the prompt with the generation prompt added.
    tokenizer = tiny_chat_model.tokenizer
    trl_ids = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True)
    trl_ids = trl_ids["input_ids"] if hasattr(trl_ids, "keys") else trl_ids
    assert list(trl_ids) == tiny_chat_model._encode(_chat_dicts(sent[0]))


# --------------------------------------------------------------------------- config


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"DistillConfig\.lora_r must be an integer >= 1, got 0"):
        DistillConfig(lora_r=0)
    with pytest.raises(ValueError, match=r"DistillConfig\.learning_rate"):
        DistillConfig(learning_rate=5.0)
    with pytest.raises(ValueError, match=r"DistillConfig\.device must be one of"):
        DistillConfig(device="tpu")
    with pytest.raises(ValueError, match=r"DistillConfig\.save_dtype"):
        DistillConfig(save_dtype="int8")
    with pytest.raises(ValueError, match=r"Unknown DistillConfig field\(s\) \['lora_rank'\]"):
        DistillConfig.from_dict({"lora_rank": 4})
    assert DistillConfig(lora_r=4).lora_alpha == 8
    assert DistillConfig(target_modules="q_proj, v_proj").target_modules == ["q_proj", "v_proj"]  # type: ignore[arg-type]


def test_config_from_yaml_and_flag_override(tmp_path: Path) -> None:
    from langchain_divconq.cli.router import _build_parser

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lora_r: 8\nlearning_rate: 1.0e-3\ntarget_modules: [q_proj, v_proj]\n")
    cfg = DistillConfig.from_yaml(recipe)
    assert (cfg.lora_r, cfg.learning_rate, cfg.target_modules) == (8, 1e-3, ["q_proj", "v_proj"])

    from langchain_divconq.training.config import config_from_args

    args = _build_parser().parse_args(
        [
            "distill",
            "--config",
            str(recipe),
            "--lora-r",
            "4",
            "--bf16",
            "false",
            "--eval-steps",
            "none",
        ]
    )
    merged = config_from_args(args, args.config)
    assert merged.lora_r == 4  # the flag wins
    assert merged.learning_rate == 1e-3  # the file's value stays
    assert merged.bf16 is False and merged.eval_steps is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        DistillConfig.from_yaml(bad)


# --------------------------------------------------------------------------- distill


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.unit_tests.tiny import build_tiny_model_and_tokenizer

    model, tokenizer = build_tiny_model_and_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-base")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _gold_traces(n: int) -> list[Trace]:
    return [
        Trace(
            question=f"Sam has {i} red and {i + 2} blue pens. How many pens does he have?",
            sub_questions=["How many red pens?", "How many blue pens?"],
            score=1.0,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def distilled(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from langchain_divconq.training import build_dataset, distill

    dataset = build_dataset(_gold_traces(12), variant="SD-R", val_fraction=0.25)
    out = tmp_path_factory.mktemp("adapter")
    config = DistillConfig(
        base_model=str(tiny_base),
        output_dir=str(out),
        variant="SD-R",
        lora_r=4,
        learning_rate=1e-2,
        max_steps=2,
        batch_size=4,
        device="cpu",
        logging_steps=1,
        save_steps=1,
        max_length=256,
    )
    return distill(config, dataset), dataset


def test_distill_trains_lora_only(distilled: tuple[Path, Any], tiny_base: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from langchain_divconq.training import read_metadata
    from langchain_divconq.training.dataset import dataset_hash

    folder, dataset = distilled
    weights = load_file(str(folder / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    # LoRA's B matrices start at zero, so non-zero ones were trained.
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)

    original = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), folder)
    base_after = reloaded.get_base_model().state_dict()
    for name, tensor in original.items():
        key = name if name in base_after else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(base_after[key], tensor), name

    meta = read_metadata(folder)
    assert meta["variant"] == "SD-R"
    assert meta["global_step"] == 2
    assert meta["data_hash"] == dataset_hash(dataset["train"])
    assert meta["train_examples"] == len(dataset["train"])
    assert isinstance(meta["eval_loss"], float)
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4


def test_adapter_loads_back_and_runs_in_the_chain(
    distilled: tuple[Path, Any], tiny_base: Path
) -> None:
    from langchain_divconq.chain import create_divconq_chain
    from langchain_divconq.local import load_decomposer

    folder, _ = distilled
    decomposer = load_decomposer(base=str(tiny_base), adapter=str(folder), max_tokens=6)
    chain = create_divconq_chain(decomposer, FakeListChatModel(responses=["The answer is: 7"]))
    result = chain.invoke({"question": "Sam has 3 red and 4 blue pens. How many pens?"})
    assert result["answer"] == "7"
    assert isinstance(result["decomposition"], str)


def test_cli_dataset_then_distill_resumes(
    distilled: tuple[Path, Any], tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from langchain_divconq.cli import main

    store = tmp_path / "traces.jsonl"
    lines = [t.model_dump_json() for t in _gold_traces(12)]
    store.write_text("\n".join(lines) + "\n{half a line", encoding="utf-8")
    data = tmp_path / "data"
    assert main(["dataset", "--store", str(store), "--variant", "SD-R", "--out", str(data)]) == 0
    info = json.loads((data / "divconq_dataset.json").read_text())
    assert info["variant"] == "SD-R" and sum(info["splits"].values()) == 12

    # Continue the fixture's run (copied) for one more step: it resumes from checkpoint-2.
    folder, _ = distilled
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base_model: {tiny_base}\nlora_r: 4\nmax_steps: 2\ndevice: cpu\n")
    argv = ["distill", "--config", str(recipe), "--dataset", str(data), "--output-dir", str(run)]
    assert main([*argv, "--max-steps", "3", "--batch-size", "4", "--max-length", "256"]) == 0
    meta = json.loads((run / "divconq_adapter.json").read_text())
    assert meta["global_step"] == 3
    assert meta["resumed_from"].endswith("checkpoint-2")
    assert meta["variant"] == "SD-R"
    assert "adapter ->" in capsys.readouterr().out


@pytest.mark.slow
def test_shipped_adapter_decomposes_by_default() -> None:
    from langchain_divconq.local import DEFAULT_ADAPTER_DIR, load_decomposer
    from langchain_divconq.prompts import decomposer_messages, message_text, parse_sub_questions
    from langchain_divconq.training import read_metadata

    meta = read_metadata(DEFAULT_ADAPTER_DIR)
    assert meta["variant"] == "SD-T" and meta["base_model"].endswith("SmolLM2-135M-Instruct")
    assert (DEFAULT_ADAPTER_DIR / "adapter_model.safetensors").stat().st_size <= 10_000_000
    decomposer = load_decomposer(max_tokens=64)
    assert decomposer.model_name.endswith("+general-decomposer")
    question = (
        "Ann buys 3 packs of 12 pencils and gives away 10 pencils. How many pencils are left?"
    )
    text = message_text(decomposer.invoke(decomposer_messages(question)))
    assert 1 <= len(parse_sub_questions(text)) <= 3, text
    # The general decomposer asks for the bridge entity of a two-hop question first.
    hops = parse_sub_questions(
        message_text(
            decomposer.invoke(decomposer_messages("Who was the second wife of the founder of CNN?"))
        )
    )
    assert len(hops) == 2 and "founder of CNN" in hops[0], hops


def test_packaged_adapter_metadata_names_no_local_path() -> None:
    from langchain_divconq.local.loaders import ADAPTERS_DIR

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    for folder in sorted(p for p in ADAPTERS_DIR.iterdir() if p.is_dir()):
        for name in ("adapter_config.json", "divconq_adapter.json"):
            data = json.loads((folder / name).read_text())
            local = [s for s in strings(data) if s.startswith(("/", "~")) or ":\\" in s]
            assert not local, (folder.name, name, local)


def test_prefix_sharing_trains_the_same_weights(
    distilled: tuple[Path, Any], tiny_base: Path, tmp_path: Path
) -> None:
    """distill() shares the system prompt by default; turned off it reaches the same adapter."""
    from safetensors.torch import load_file

    from langchain_divconq.training import distill

    folder, dataset = distilled
    meta = json.loads((folder / "divconq_adapter.json").read_text())
    config = DistillConfig(**{**meta["config"], "output_dir": str(tmp_path)})
    assert config.share_prompt_prefix
    config.share_prompt_prefix = False
    plain = load_file(str(distill(config, dataset) / "adapter_model.safetensors"))
    shared = load_file(str(folder / "adapter_model.safetensors"))
    assert plain.keys() == shared.keys()
    # Adam's first steps are about +-lr whatever a gradient's size, so float-rounding noise
    # in near-zero gradients flips single entries; the weights as a whole must agree.
    for name in plain:
        gap = (plain[name].float() - shared[name].float()).abs().mean()
        assert gap < 0.05 * plain[name].float().abs().mean() + 1e-6, name

    def losses(path: Path) -> list[float]:
        rows = [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]
        return [row["loss"] for row in rows if "loss" in row]

    assert losses(tmp_path) == pytest.approx(losses(folder), rel=1e-4)


@pytest.mark.slow
def test_compiled_layers_train_the_same_losses(distilled: tuple[Path, Any], tmp_path: Path) -> None:
    """compile_layers=True changes the kernels, not the training: the logged losses agree."""
    from langchain_divconq.training import distill

    folder, dataset = distilled
    meta = json.loads((folder / "divconq_adapter.json").read_text())
    config = DistillConfig(**{**meta["config"], "output_dir": str(tmp_path)})
    config.compile_layers = True
    distill(config, dataset)

    def losses(path: Path) -> list[float]:
        rows = [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]
        return [row["loss"] for row in rows if "loss" in row]

    assert losses(tmp_path) == pytest.approx(losses(folder), rel=2e-3)
    saved = json.loads((tmp_path / "divconq_adapter.json").read_text())
    assert saved["config"]["compile_layers"] is True
