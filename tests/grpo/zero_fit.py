"""Run by tests/grpo/test_deepspeed.py: 2-rank fits under CPU DeepSpeed (and DDP) that record what each rank did.

Lightning's launcher re-executes this script once per extra rank, so it must be a script, not a test. All phases
run one after another in the same two processes (one launch, one process group), which keeps the test's cost to a
single start-up.

Usage: python tests/grpo/zero_fit.py MODEL_DIR DATA_JSONL OUT_DIR [PHASE,PHASE,...]
Writes OUT_DIR/<phase>/rank<r>.pt with the rollouts, initial and updated weights, logged metrics and, for each
optimizer step, the tensors that ``named_weights`` would hand to the rollout engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

from openrs_pl.cli import cli_main
from openrs_pl.rollout.vllm_engine import named_weights

# One optimizer step = 2 prompts x 6 completions per rank, in micro-batches of 4: M = 3 backward passes per step.
COMMON = [
    "--config", "configs/tiny_cpu.yaml", "--trainer.devices", "2", "--trainer.enable_progress_bar", "false",
    "--rollout.max_completion_length", "8", "--data.prompts_per_step", "2",
    "--model.grpo.micro_batch_size", "4", "--model.optim.warmup_ratio", "0.0",
    # AdamW's first update is lr * g / (|g| + eps): a large eps makes it (nearly) linear in the gradient, so a
    # wrongly accumulated gradient shows up in the weights instead of being hidden by the sign-like update.
    "--model.optim.lr", "1e-2", "--model.optim.eps", "1.0",
    # Length-dependent scores for wrong answers: non-zero advantages even for a random model.
    "--rollout.rewards", "[{name: cosine, kwargs: {max_len: 20, gold_field: answer}}]",
]  # fmt: skip

PHASES: dict[str, list[str]] = {
    # (a) exactness: ZeRO-2 and DDP, bnpo and dapo, one optimizer step each.
    "zero2_bnpo": ["--trainer.strategy", "deepspeed_stage_2_cpu", "--model.grpo.loss_type", "bnpo"],
    "zero2_dapo": ["--trainer.strategy", "deepspeed_stage_2_cpu", "--model.grpo.loss_type", "dapo"],
    "ddp_bnpo": ["--trainer.strategy", "ddp", "--model.grpo.loss_type", "bnpo"],
    "ddp_dapo": ["--trainer.strategy", "ddp", "--model.grpo.loss_type", "dapo"],
    # (b, c) bf16 under ZeRO-2 for two steps, a checkpoint after each; then a resume from the first one.
    "zero2_bf16": ["--trainer.strategy", "deepspeed_stage_2_cpu", "--trainer.precision", "bf16-mixed"],
    "zero2_bf16_resume": ["--trainer.strategy", "deepspeed_stage_2_cpu", "--trainer.precision", "bf16-mixed"],
    # (d) ZeRO-3 partitions the policy: the vLLM sync must refuse it.
    "zero3": ["--trainer.strategy", "deepspeed_stage_3_cpu"],
}
MAX_STEPS = {"zero2_bf16": 2, "zero2_bf16_resume": 3}


class Recorder(L.Callback):
    """Per rank: the rollouts trained on, weights before/after, logged metrics, engine-bound weights per step."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.record: dict[str, Any] = {"rollouts": [], "synced": [], "metrics": []}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["initial"] = _float_state(pl_module.policy)
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            from deepspeed.comm import comm

            self.record["shm_comm_op"] = comm.cdb.shm_comm_op is not None
        self.record["synced_types"] = {}
        log_dict = pl_module.log_dict

        def spy(metrics: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            # What reaches sync_dist: a CPU tensor here would be all-reduced by NCCL on a GPU run and crash.
            if kwargs.get("sync_dist"):
                self.record["synced_types"].update({k: type(v).__name__ for k, v in metrics.items()})
            log_dict(metrics, *args, **kwargs)

        pl_module.log_dict = spy
        try:
            next(iter(named_weights(pl_module.policy)))
        except NotImplementedError as err:
            self.record["sync_error"] = str(err)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.record["rollouts"].append(batch.rollout.to("cpu"))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.record["metrics"].append({k: v for k, v in trainer.logged_metrics.items() if k.startswith("train/")})
        if "sync_error" not in self.record:
            synced = {name: t.detach().clone() for name, t in named_weights(pl_module.policy)}
            self.record["synced"].append(synced)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["final"] = _float_state(pl_module.policy)
        self.record["global_step"] = trainer.global_step
        self.record["checkpoint_dir"] = str(trainer.checkpoint_callback.dirpath)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out / f"rank{trainer.global_rank}.pt")


def _float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def run_phase(name: str, model_dir: str, data: str, out: Path) -> None:
    root = out / name
    args = [
        *COMMON, *PHASES[name], "--model.name_or_path", model_dir, "--data.source", data,
        "--trainer.max_steps", str(MAX_STEPS.get(name, 1)), "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root), "--config", str(out / "every_step.yaml"),
    ]  # fmt: skip
    cli = cli_main(args, run=False)
    cli.trainer.callbacks.append(Recorder(root))
    ckpt_path = None
    if name == "zero2_bf16_resume":
        ckpt_path = str(next((out / "zero2_bf16").rglob("step1.ckpt")))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)


def main(model_dir: str, data: str, out: str, phases: str = ",".join(PHASES)) -> None:
    # A checkpoint after every optimizer step (tiny_cpu.yaml saves every 50).
    checkpoint = {"every_n_train_steps": 1, "save_top_k": -1, "filename": "step{step}"}
    checkpoint["auto_insert_metric_name"] = False
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint}]
    (Path(out) / "every_step.yaml").write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    for name in phases.split(","):
        run_phase(name, model_dir, data, Path(out))


if __name__ == "__main__":
    main(*sys.argv[1:5])
