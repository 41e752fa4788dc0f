"""Generation with ``transformers``' ``model.generate`` on the policy itself.

The simplest engine: it samples from the very module being trained, so there is nothing to sync. It is the
default on CPU and the fallback for evaluation when vLLM is not installed. Slower than vLLM on GPU (no paged
KV cache, no continuous batching), but exact: its samples come from the current weights by construction.

Sampling draws from a generator of its own (:class:`SeededSampler`), not torch's global one: a seeded request is
reproducible even while another thread (the trainer, when generation runs in the background) uses the global
generator, and the sampler's log-prob of each drawn token comes for free.
"""

from __future__ import annotations

import time
from typing import cast

import torch
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from openrs_pl.rollout.assemble import pad_left
from openrs_pl.rollout.types import GenerationOutput, PolicySource, SamplingConfig, per_completion


class HFEngine:
    """Batched ``model.generate`` over left-padded prompts, ``n`` samples per prompt.

    Args:
        model: the HF causal LM to sample from (the trainer's policy, or a model the caller loaded).
        eos_token_id: token that ends a completion; read from the model's generation config if omitted.
        pad_token_id: padding id for the batched prompts; defaults to ``eos_token_id``.
        batch_size: prompts per ``generate`` call (each expands to ``n`` sequences); ``None`` = all at once.
        logprobs: report each sampled token's log-prob under the sampling distribution
            (``GenerationOutput.logprobs``; not for greedy requests). Off by default: the module then computes an
            extra policy pass to compare against them.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        batch_size: int | None = None,
        logprobs: bool = False,
    ) -> None:
        if not isinstance(model, GenerationMixin):
            raise TypeError(f"HFEngine samples with model.generate: {type(model).__name__} is not a causal LM")
        self.model = model
        self.logprobs = logprobs
        gen_cfg = self.model.generation_config
        eos = eos_token_id if eos_token_id is not None else gen_cfg.eos_token_id
        self.eos_token_id: int = eos[0] if isinstance(eos, list) else eos
        pad = pad_token_id if pad_token_id is not None else gen_cfg.pad_token_id
        self.pad_token_id: int = pad if pad is not None else self.eos_token_id
        self.batch_size = batch_size

    @classmethod
    def for_policy(cls, source: PolicySource, batch_size: int | None = None, logprobs: bool = False) -> HFEngine:
        """An engine that samples from a trainer's policy, with its tokenizer's EOS and padding ids."""
        return cls(
            cast(PreTrainedModel, source.policy),
            eos_token_id=source.tokenizer.eos_token_id,
            pad_token_id=source.pad_token_id,
            batch_size=batch_size,
            logprobs=logprobs,
        )

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> GenerationOutput:
        began = time.perf_counter()
        step = self.batch_size or max(len(prompt_ids), 1)
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device)
        # Unseeded requests take their seed from the global generator, so torch.manual_seed still governs them.
        generator.manual_seed(sampling.seed if sampling.seed is not None else int(torch.randint(2**62, ()).item()))
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        was_training = self.model.training
        # eval() so gradient checkpointing does not switch the KV cache off during sampling.
        self.model.eval()
        try:
            for start in range(0, len(prompt_ids), step):
                ids, lps = self._generate_chunk(prompt_ids[start : start + step], sampling, generator)
                completions.extend(ids)
                logprobs.extend(lps)
        finally:
            self.model.train(was_training)
        finished = [bool(c) and c[-1] == self.eos_token_id for c in completions]
        report = self.logprobs and sampling.temperature > 0
        return GenerationOutput(
            completion_ids=completions,
            finished=finished,
            logprobs=logprobs if report else None,
            generation_s=time.perf_counter() - began,
        )

    def _generate_chunk(
        self, prompts: list[list[int]], sampling: SamplingConfig, generator: torch.Generator
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Completions (cut after EOS) and their tokens' sampling log-probs (empty lists for greedy requests)."""
        device = next(self.model.parameters()).device
        # [B*n, P], the n samples of a prompt consecutive; the last prompt token at P-1
        input_ids, attention_mask = pad_left(per_completion(prompts, sampling.n), self.pad_token_id)
        width = input_ids.shape[1]
        sampler = SeededSampler(sampling, generator) if sampling.temperature > 0 else None
        # generate() decodes greedily on what the sampler returns: the drawn token is the only one left.
        # The ignore: transformers declares generate's self as a Protocol that PreTrainedModel itself does not satisfy
        # under mypy (read-only device/dtype properties): a transformers typing gap, not a mismatch here.
        out = self.model.generate(  # type: ignore[misc]
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=LogitsProcessorList([sampler]) if sampler is not None else None,
            max_new_tokens=sampling.max_tokens,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            use_cache=True,
        )  # [B*n, P+L]
        completions = [_cut_at_eos(row[width:].tolist(), self.eos_token_id) for row in out]
        if sampler is None:
            return completions, [[] for _ in completions]
        drawn = torch.stack(sampler.logprobs, dim=1).tolist() if sampler.logprobs else [[] for _ in completions]
        return completions, [lps[: len(ids)] for ids, lps in zip(completions, drawn, strict=True)]

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


class SeededSampler:
    """A logits processor that draws the next token itself and records the token's log-prob.

    The scores are warped as ``generate``'s own sampling does (temperature, then top-k, then top-p), the token is
    drawn from ``softmax`` of them with ``generator``, and the returned scores are 0 at the drawn token and -inf
    elsewhere, so a greedy ``generate`` keeps exactly that token. ``logprobs[t]`` is ``[B]``: the log-prob of step
    t's drawn token under the warped distribution (the sampler's log-prob of importance sampling).
    """

    def __init__(self, sampling: SamplingConfig, generator: torch.Generator) -> None:
        self.generator = generator
        warpers: list[object] = [TemperatureLogitsWarper(sampling.temperature)]
        if sampling.top_k > 0:
            warpers.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            warpers.append(TopPLogitsWarper(sampling.top_p))
        self.warp = LogitsProcessorList(warpers)
        self.logprobs: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        warped = self.warp(cast(torch.LongTensor, input_ids), cast(torch.FloatTensor, scores.float()))  # [B, V]
        logp = torch.log_softmax(warped, dim=-1)  # [B, V]
        token = torch.multinomial(logp.exp(), 1, generator=self.generator)  # [B, 1]
        self.logprobs.append(logp.gather(1, token).squeeze(1))  # [B]
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)  # [B, V]
