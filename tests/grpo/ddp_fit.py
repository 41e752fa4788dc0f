"""Run by tests/grpo/test_ddp.py: a 2-process DDP fit (gloo) through the CLI that records what each rank saw.

Lightning's DDP launcher re-executes this script once per extra rank, so it must be a script, not a test.
Usage: python tests/grpo/ddp_fit.py MODEL_DIR DATA_JSONL OUT_DIR [--resume CKPT] [EXTRA CLI ARGS...]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch

from openrs_pl.cli import cli_main
from openrs_pl.rollout.callback import find_rollout_callback


class Recorder(L.Callback):
    """Writes, per rank, the problems it trained on and a hash of its policy weights after the fit."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.problems: list[str] = []
        self.rollouts: list[dict[str, list]] = []  # per step: what this rank handed the loss
        self.initial_sha256 = ""

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial_sha256 = weights_sha256(pl_module.policy)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.problems.extend(batch.columns["problem"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollout = batch.rollout
        lengths = rollout.completion_mask.sum(dim=1).tolist()
        self.rollouts.append(
            {
                "prompt_ids": batch.prompt_ids,
                "completion_ids": [ids[:n] for ids, n in zip(rollout.completion_ids.tolist(), lengths, strict=True)],
                "rewards": rollout.rewards.tolist(),
                "advantages": rollout.advantages.tolist(),
                "tokens": [int(rollout.completion_mask.sum())],
                # A collective: every rank calls it here, as training_step does.
                "global_active_tokens": [pl_module._global_active_tokens(rollout)],
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        record = {
            "rollouts": self.rollouts,
            "problems": self.problems,
            "initial_sha256": self.initial_sha256,
            "weights_sha256": weights_sha256(pl_module.policy),
            "step": trainer.global_step,
            "engine": type(find_rollout_callback(trainer).engine).__name__,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float64).numpy().tobytes())
    return digest.hexdigest()


def main(model_dir: str, data: str, out: str, *extra: str) -> None:
    ckpt_path = None
    if extra[:1] == ("--resume",):  # fit(ckpt_path=...): with run=False the CLI has no --ckpt_path
        ckpt_path, extra = extra[1], extra[2:]
    args = [
        "--config", "configs/tiny_cpu.yaml", "--model.name_or_path", model_dir, "--data.source", data,
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "2",
        "--trainer.default_root_dir", out, "--trainer.logger.init_args.save_dir", out,
        "--trainer.enable_progress_bar", "false", "--rollout.max_completion_length", "8",
        "--data.prompts_per_step", "2", "--model.grpo.micro_batch_size", "6", "--model.optim.lr", "1e-3",
        # Length-dependent scores for wrong answers: non-zero advantages even for a random model.
        "--rollout.rewards", "[{name: cosine, kwargs: {max_len: 20, gold_field: answer}}]",
        *extra,
    ]  # fmt: skip
    cli = cli_main(args, run=False)
    cli.trainer.callbacks.append(Recorder(Path(out)))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
