"""Generation with ``transformers``' ``model.generate`` on the policy itself.

The simplest engine: it samples from the very module being trained, so there is nothing to sync. It is the
default on CPU and the fallback for evaluation when vLLM is not installed. Slower than vLLM on GPU (no paged
KV cache, no continuous batching), but exact: its samples come from the current weights by construction.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import cast

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel

from openrs_pl.rollout.assemble import pad_left
from openrs_pl.rollout.types import GenerationOutput, PolicySource, SamplingConfig


class HFEngine:
    """Batched ``model.generate`` over left-padded prompts, ``n`` samples per prompt.

    Args:
        model: the HF causal LM to sample from (the trainer's policy, or a model the caller loaded).
        eos_token_id: token that ends a completion; read from the model's generation config if omitted.
        pad_token_id: padding id for the batched prompts; defaults to ``eos_token_id``.
        batch_size: prompts per ``generate`` call (each expands to ``n`` sequences); ``None`` = all at once.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        if not isinstance(model, GenerationMixin):
            raise TypeError(f"HFEngine samples with model.generate: {type(model).__name__} is not a causal LM")
        self.model = model
        gen_cfg = self.model.generation_config
        eos = eos_token_id if eos_token_id is not None else gen_cfg.eos_token_id
        self.eos_token_id: int = eos[0] if isinstance(eos, list) else eos
        pad = pad_token_id if pad_token_id is not None else gen_cfg.pad_token_id
        self.pad_token_id: int = pad if pad is not None else self.eos_token_id
        self.batch_size = batch_size

    @classmethod
    def for_policy(cls, source: PolicySource, batch_size: int | None = None) -> HFEngine:
        """An engine that samples from a trainer's policy, with its tokenizer's EOS and padding ids."""
        return cls(
            cast(PreTrainedModel, source.policy),
            eos_token_id=source.tokenizer.eos_token_id,
            pad_token_id=source.pad_token_id,
            batch_size=batch_size,
        )

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        step = self.batch_size or max(len(prompt_ids), 1)
        completions: list[list[int]] = []
        was_training = self.model.training
        # eval() so gradient checkpointing does not switch the KV cache off during sampling.
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[]) if sampling.seed is not None else nullcontext():
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                for start in range(0, len(prompt_ids), step):
                    completions.extend(self._generate_chunk(prompt_ids[start : start + step], sampling))
        finally:
            self.model.train(was_training)
        finished = [bool(c) and c[-1] == self.eos_token_id for c in completions]
        return GenerationOutput(completion_ids=completions, finished=finished)

    def _generate_chunk(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[int]]:
        device = next(self.model.parameters()).device
        input_ids, attention_mask = pad_left(prompts, self.pad_token_id)  # [B, P]: last prompt token at P-1
        width = input_ids.shape[1]
        greedy = sampling.temperature == 0.0
        # The ignore: transformers declares generate's self as a Protocol that PreTrainedModel itself does not satisfy
        # under mypy (read-only device/dtype properties): a transformers typing gap, not a mismatch here.
        out = self.model.generate(  # type: ignore[misc]
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else sampling.top_k,
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=sampling.n,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            use_cache=True,
        )  # [B*n, P+L], the n samples of a prompt consecutive
        return [_cut_at_eos(row[width:].tolist(), self.eos_token_id) for row in out]

    def sync_weights(self, policy: nn.Module, force: bool = False) -> None:
        """Nothing to do: this engine samples from the module it was given, which is the policy itself."""

    def sleep(self) -> None:
        """Nothing to release: the weights are the trainer's and there is no separate KV cache."""

    def wake_up(self) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        """Nothing to shut down."""


def _cut_at_eos(ids: list[int], eos: int) -> list[int]:
    """Keep tokens up to and including the first EOS (generate pads finished rows after it)."""
    return ids[: ids.index(eos) + 1] if eos in ids else ids
