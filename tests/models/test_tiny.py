"""The tiny Qwen2 checkpoint: HF round trip, R1-style chat template, think tags, digit splitting, head-size guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from openrs_pl.models.tiny import ASSISTANT, BOS, EOS, USER, build_tiny_model, save_shaped_checkpoint
from openrs_pl.plan import ModelShape


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_saved_folder_loads_with_auto_classes_and_runs(
    tiny_model_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size >= len(tokenizer) and model.config.vocab_size % 64 == 0
    assert model.config.hidden_size // model.config.num_attention_heads >= 32
    ids = torch.tensor([tokenizer("1+1=2", add_special_tokens=False)["input_ids"]])  # [1, L]
    with torch.no_grad():
        logits = model(ids).logits  # [1, L, V]
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_special_tokens_and_padding(tokenizer: PreTrainedTokenizerBase) -> None:
    assert (tokenizer.bos_token, tokenizer.eos_token) == (BOS, EOS)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left"


def test_chat_template_matches_r1_layout(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == f"{BOS}SYS{USER}Q?{ASSISTANT}<think>\n"
    closed = messages + [{"role": "assistant", "content": "A"}]
    assert tokenizer.apply_chat_template(closed, tokenize=False) == f"{BOS}SYS{USER}Q?{ASSISTANT}A{EOS}"


def test_think_tags_are_single_non_special_tokens_that_survive_decode(tokenizer: PreTrainedTokenizerBase) -> None:
    body = "<think>\nLet me add 2 and 2.\n</think>\nThe answer is $\\boxed{4}$."
    ids = tokenizer(body + EOS, add_special_tokens=False)["input_ids"]
    for tag in ("<think>", "</think>"):
        tag_id = tokenizer.convert_tokens_to_ids(tag)
        assert tag_id in ids and tag_id not in tokenizer.all_special_ids
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == body


def test_digits_are_split_one_per_token(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer("12345", add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == list("12345")


def test_head_size_below_32_is_rejected(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match="head size 16 < 32"):
        build_tiny_model(tokenizer, hidden_size=64, num_heads=4)


def test_shaped_checkpoint_has_the_shape_and_the_planners_parameter_count(tmp_path: Path) -> None:
    """The benchmarks' stand-in for a real model: its architecture is the shape's, counted as the planner counts."""
    shape = ModelShape(
        vocab_size=4096, hidden_size=128, intermediate_size=352, num_layers=3, num_heads=4, num_kv_heads=2,
        head_dim=32, tie_word_embeddings=False, dtype="bfloat16",
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(save_shaped_checkpoint(tmp_path / "m", shape))
    assert ModelShape.from_hf_config(model.config) == shape
    assert sum(p.numel() for p in model.parameters()) == shape.num_params()
    assert model.dtype == torch.bfloat16
    assert model.generation_config.eos_token_id == AutoTokenizer.from_pretrained(tmp_path / "m").eos_token_id
