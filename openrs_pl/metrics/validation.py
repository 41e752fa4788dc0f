"""Benchmark pass@1 during training: a callback that samples a small benchmark subset every few optimizer steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from openrs_pl.data.benchmarks import load_benchmark
from openrs_pl.eval.pipeline import Generate, WorkItem, generate_records, grade_records
from openrs_pl.metrics.passk import PassAtK
from openrs_pl.rollout.callback import RolloutCallback, policy_source
from openrs_pl.rollout.types import SamplingConfig


class ValidationPassAtK(L.Callback):
    """Logs ``val/pass@1/<benchmark>`` and ``val/pass@1/avg`` every ``every_n_steps`` optimizer steps and at fit end.

    Each rank generates for its own slice (``rank::world_size``) of the first ``num_problems`` problems of each
    benchmark; the :class:`~openrs_pl.metrics.passk.PassAtK` states are concatenated across ranks on compute,
    so the logged value is the pass@1 over all ``num_problems`` problems, identical on every rank.

    Generation reuses the trainer's rollout engine when a ``RolloutCallback`` is present (vLLM included, in its
    dedicated or colocated mode), else ``model.generate`` on ``pl_module.policy``. The check runs at the *start*
    of the batch after the step that triggers it, once that step's weight sync (at batch end) is done; with
    ``sync_every > 1`` on the rollout side the engine may lag the policy by up to that many steps.

    Args:
        benchmarks: Benchmark names (see ``openrs_pl.data.benchmarks.BENCHMARKS``).
        num_problems: The first N problems of each benchmark are evaluated.
        samples: Completions per problem (pass@1 is their mean accuracy).
        every_n_steps: Optimizer steps between checks.
        temperature: Sampling temperature (evaluation default 0.6).
        top_p: Nucleus sampling mass (evaluation default 0.95).
        max_tokens: Completion token limit, shorter than evaluation's 32768 to keep checks cheap.
        at_fit_end: Also check once when training ends (unless the last step was just checked).
        grading_timeout_s: math-verify time limit per completion.
        seed: Sampling seed (the same problems and seed each time, so checks differ only by the weights).
    """

    def __init__(
        self,
        benchmarks: Sequence[str] = ("math500",),
        num_problems: int = 50,
        samples: int = 1,
        every_n_steps: int = 50,
        temperature: float = 0.6,
        top_p: float = 0.95,
        max_tokens: int = 3584,
        at_fit_end: bool = True,
        grading_timeout_s: float = 5.0,
        seed: int = 1234,
    ) -> None:
        super().__init__()
        if every_n_steps < 1 or num_problems < 1 or samples < 1:
            raise ValueError("every_n_steps, num_problems and samples must be >= 1")
        self.benchmarks = list(benchmarks)
        self.problems = {b: load_benchmark(b)[:num_problems] for b in self.benchmarks}  # fails early on a bad name
        self.samples = samples
        self.every_n_steps = every_n_steps
        self.sampling = SamplingConfig(
            n=samples, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
        )
        self.at_fit_end = at_fit_end
        self.grading_timeout_s = grading_timeout_s
        self._last_step = -1
        self._fallback_engine: Any = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # global_step advances by num_iterations per generation batch, so it may jump over a multiple of
        # every_n_steps: check at the first batch at or past each multiple, once.
        if step == 0 or step // self.every_n_steps <= max(self._last_step, 0) // self.every_n_steps:
            return
        scores = self.evaluate(trainer, pl_module)
        for name, value in scores.items():
            # logger=False: the loggers get the values below, whatever log_every_n_steps is (a check every 50
            # steps would otherwise be dropped unless the two intervals align). Every rank holds the same, already
            # gathered value, so no further reduction (sync_dist) is needed.
            pl_module.log(name, value, on_step=True, on_epoch=False, sync_dist=False, logger=False)
        self._write_to_loggers(trainer, scores)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.at_fit_end or trainer.global_step == self._last_step:
            return
        scores = self.evaluate(trainer, pl_module)
        # LightningModule.log is not allowed in on_train_end; callback_metrics still serve later readers.
        trainer.callback_metrics.update(scores)
        self._write_to_loggers(trainer, scores)

    @staticmethod
    def _write_to_loggers(trainer: L.Trainer, scores: dict[str, torch.Tensor]) -> None:
        for logger in trainer.loggers:  # loggers write on rank zero only
            logger.log_metrics({k: float(v) for k, v in scores.items()}, step=trainer.global_step)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """Generate, grade and gather; returns ``{"val/pass@1/<bench>": value, ..., "val/pass@1/avg": mean}``.

        A collective under DDP: every rank must call it at the same step.
        """
        self._last_step = trainer.global_step
        rank, world = trainer.global_rank, trainer.world_size
        items = [
            WorkItem(bench, row, tuple(range(self.samples)))
            for bench, rows in self.problems.items()
            for row in rows[rank::world]
        ]
        generate = self._generator(trainer, pl_module)
        records = grade_records(
            generate_records(generate, policy_source(pl_module).tokenizer, items, self.sampling), self.grading_timeout_s
        )
        scores = {}
        for bench in self.benchmarks:
            correct = [r["correct"] for r in records if r["benchmark"] == bench]  # item order, then sample order
            verdicts = torch.tensor(correct, dtype=torch.bool, device=pl_module.device).view(-1, self.samples)
            metric = PassAtK(ks=(1,)).to(pl_module.device)
            metric.update(verdicts)  # [problems on this rank, samples]
            scores[f"val/pass@1/{bench}"] = metric.compute()["pass@1"].float()  # gathers across ranks
        scores["val/pass@1/avg"] = torch.stack(list(scores.values())).mean()
        return scores

    def _generator(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Generate:
        """The rollout callback's generation path if there is one, else ``generate`` on the policy itself."""
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, RolloutCallback) and (callback.engine is not None or trainer.world_size > 1):
                # Its dispatcher also covers the dedicated vLLM mode, where only rank 0 holds an engine.
                return lambda prompt_ids, sampling: callback.generate(trainer, prompt_ids, sampling)
        if self._fallback_engine is None:
            from openrs_pl.rollout.hf_engine import HFEngine

            self._fallback_engine = HFEngine.for_policy(policy_source(pl_module))
        return self._fallback_engine.generate
