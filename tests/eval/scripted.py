"""A scripted generation engine for pipeline tests: right on sample 0 of each problem, wrong afterwards."""

from __future__ import annotations

from openrs_pl.rollout.types import GenerationOutput, SamplingConfig


class ScriptedEngine:
    """Answers sample 0 of every problem with the gold in lighteval's format and later samples wrongly.

    Sample 1 is also cut at the token limit (``finished=False``), so truncation and length figures are known.
    It recognises the problem by decoding the prompt, as a model would only "see" the prompt tokens.
    """

    def __init__(self, tokenizer, problems: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.problems = problems  # problem text -> gold answer
        self.requests: list[tuple[int, int]] = []  # (prompts, n) per generate call
        self.prompts: list[list[int]] = []
        self.right_samples = {0}  # sample indices answered with the gold

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        self.requests.append((len(prompt_ids), sampling.n))
        self.prompts.extend(prompt_ids)
        ids, finished = [], []
        for prompt in prompt_ids:
            text = self.tokenizer.decode(prompt)
            gold = next(a for p, a in self.problems.items() if p in text)
            for j in range(sampling.n):
                answer = gold.strip("$") if j in self.right_samples else "-987654321"
                body = f"Hm.\n</think>\nTherefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct"
                tokens = self.tokenizer(body, add_special_tokens=False)["input_ids"]
                ids.append(tokens if j == 1 else [*tokens, self.tokenizer.eos_token_id])
                finished.append(j != 1)
        return GenerationOutput(completion_ids=ids, finished=finished)

    def sync_weights(self, policy) -> None:  # pragma: no cover - the protocol's other half, unused by eval
        raise NotImplementedError
