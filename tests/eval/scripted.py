"""For pipeline tests: a scripted generation engine (right on sample 0 of each problem, wrong afterwards) and a
module with just enough of the GRPO module for the callbacks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrs_pl.rollout.types import GenerationOutput, SamplingConfig


class ScriptedEngine:
    """Answers sample 0 of every problem with the gold in lighteval's format and later samples wrongly (or the
    samples in ``right_by_problem[problem]`` right, where set), and records which samples carried the gold.

    Sample 1 is also cut at the token limit (``finished=False``), so truncation and length figures are known.
    It recognises the problem by decoding the prompt, as a model would only "see" the prompt tokens.
    """

    def __init__(self, tokenizer, problems: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.problems = problems  # problem text -> gold answer
        self.requests: list[tuple[int, int]] = []  # (prompts, n) per generate call
        self.prompts: list[list[int]] = []
        self.right_samples = {0}  # sample indices answered with the gold
        self.right_by_problem: dict[str, set[int]] = {}  # per-problem exceptions to right_samples
        self.answered: dict[str, list[bool]] = {}  # problem text -> whether each sample carried the gold

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        self.requests.append((len(prompt_ids), sampling.n))
        self.prompts.extend(prompt_ids)
        ids, finished = [], []
        for prompt in prompt_ids:
            text = self.tokenizer.decode(prompt)
            problem = next(p for p in self.problems if p in text)
            gold = self.problems[problem]
            right = self.right_by_problem.get(problem, self.right_samples)
            self.answered[problem] = [j in right for j in range(sampling.n)]
            for j in range(sampling.n):
                answer = gold.strip("$") if j in right else "-987654321"
                body = f"Hm.\n</think>\nTherefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct"
                tokens = self.tokenizer(body, add_special_tokens=False)["input_ids"]
                ids.append(tokens if j == 1 else [*tokens, self.tokenizer.eos_token_id])
                finished.append(j != 1)
        return GenerationOutput(completion_ids=ids, finished=finished)

    def sync_weights(self, policy) -> None:  # pragma: no cover - the protocol's other half, unused by eval
        raise NotImplementedError


class TinyPolicyModule(L.LightningModule):
    """Just enough of the GRPO module for the callback: ``policy``, ``tokenizer`` and a trivial loss."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.policy = AutoModelForCausalLM.from_pretrained(model_dir)
        self.pad_token_id = self.tokenizer.pad_token_id
        self.name_or_path = str(model_dir)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.policy.model.embed_tokens.weight.sum() * 0.0 + batch.sum() * 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.policy.parameters(), lr=0.0)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.zeros(16, 1), batch_size=1)
