"""Prompt strings and chat-template prompt building against the R1-style tiny tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from openrs_pl.data.prompts import OPENRS_SYSTEM_PROMPT, build_chat_prompt, format_eval_problem
from openrs_pl.models.tiny import ASSISTANT, BOS, USER

# lighteval's template as written in its source (a .format() template with a {Question} field).
LIGHTEVAL_MATH_QUERY_TEMPLATE = """
Solve the following math problem efficiently and clearly.  The last line of your response should be of the following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' (without quotes) where ANSWER is just the final number or expression that solves the problem. Think step by step before answering.

{Question}
""".strip()  # noqa: E501


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_system_prompt_keeps_the_recipes_doubled_braces() -> None:
    assert "put your final answer within \\boxed{{}} . The reasoning process" in OPENRS_SYSTEM_PROMPT
    assert OPENRS_SYSTEM_PROMPT.startswith("A conversation between User and Assistant. The user asks a question")
    assert OPENRS_SYSTEM_PROMPT.endswith(
        "<answer> answer here </answer>. Note that respond by English, NOT use other languages."
    )
    assert "  " not in OPENRS_SYSTEM_PROMPT and "\n" not in OPENRS_SYSTEM_PROMPT


@pytest.mark.parametrize("problem", ["What is $1+1$?", "Find $\\frac{a}{b}$ where {a} and {b} are sets {1, 2}."])
def test_eval_prompt_equals_lighteval_template(problem: str) -> None:
    assert format_eval_problem(problem) == LIGHTEVAL_MATH_QUERY_TEMPLATE.format(Question=problem)
    assert "$\\boxed{ANSWER}$. I hope it is correct'" in format_eval_problem(problem)
    assert format_eval_problem(problem).endswith("Think step by step before answering.\n\n" + problem)


def test_chat_prompt_is_system_then_user_then_generation_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    problem = "Compute $2+2$."
    text = build_chat_prompt(tokenizer, problem, OPENRS_SYSTEM_PROMPT)
    assert text == f"{BOS}{OPENRS_SYSTEM_PROMPT}{USER}{problem}{ASSISTANT}<think>\n"
    assert build_chat_prompt(tokenizer, problem, None) == f"{BOS}{USER}{problem}{ASSISTANT}<think>\n"


def test_chat_prompt_tokenizes_with_a_single_bos(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer(build_chat_prompt(tokenizer, "x", "sys"), add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
