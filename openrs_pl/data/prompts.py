"""The Open-RS training system prompt, the lighteval evaluation prompt, and chat-template prompt building."""

from __future__ import annotations

from typing import Any

# Verbatim from the Open-RS recipe (recipes/grpo.yaml, after YAML unescaping). The braces in ``\boxed{{}}`` stay
# doubled on purpose: the original trainer never calls ``.format()`` on the system prompt, so the model was trained
# on the literal text ``\boxed{{}} .``. "Fixing" it would change every training prompt. Never ``.format()`` it.
OPENRS_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer, and put your "
    "final answer within \\boxed{{}} . The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. Note that respond by English, NOT use other languages."
)

# lighteval's MATH_QUERY_TEMPLATE as used by Open-RS's evaluate.py (note the two spaces after "clearly."). It is a
# ``str.format`` template: ``{{ANSWER}}`` renders as ``{ANSWER}`` and ``{problem}`` is the question.
EVAL_PROMPT_TEMPLATE = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' (without quotes) "
    "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    "answering.\n\n{problem}"
)


def format_eval_problem(problem: str) -> str:
    """The evaluation user turn: ``EVAL_PROMPT_TEMPLATE`` filled in with ``problem`` (no system prompt).

    Braces inside the problem are kept as they are, since only the template is parsed by ``str.format``.

    >>> text = format_eval_problem("Compute $\\\\frac{1}{2} + {x}$.")
    >>> text.endswith("answering.\\n\\nCompute $\\\\frac{1}{2} + {x}$.")
    True
    >>> "$\\\\boxed{ANSWER}$" in text
    True
    """
    return EVAL_PROMPT_TEMPLATE.format(problem=problem)


def chat_messages(problem: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation the trainer sees: an optional system turn, then the problem as the user turn.

    >>> chat_messages("1+1?", None)
    [{'role': 'user', 'content': '1+1?'}]
    >>> [m["role"] for m in chat_messages("1+1?", "Be brief.")]
    ['system', 'user']
    """
    user = {"role": "user", "content": problem}
    return [{"role": "system", "content": system_prompt}, user] if system_prompt is not None else [user]


def build_chat_prompt(tokenizer: Any, problem: str, system_prompt: str | None) -> str:
    """The prompt text for ``problem``: the tokenizer's chat template with the generation prompt appended.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        problem: The user turn.
        system_prompt: The system turn, or ``None`` for none.

    Returns:
        The formatted text (it already contains the template's BOS; tokenize it with ``add_special_tokens=False``).
    """
    return tokenizer.apply_chat_template(
        chat_messages(problem, system_prompt), tokenize=False, add_generation_prompt=True
    )
