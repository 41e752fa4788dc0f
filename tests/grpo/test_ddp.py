"""2-process DDP on CPU (gloo): runs, keeps weights identical across ranks, and gives each rank its own prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]


def run_two_ranks(model_dir: Path, tmp_path: Path, *extra: str) -> list[dict]:
    tmp_path.mkdir(exist_ok=True)
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n" for a in range(16))
    )
    env = os.environ | {"PYTHONPATH": str(ROOT), "OPENRS_GRADING_WORKERS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/grpo/ddp_fit.py"), str(model_dir), str(data), str(tmp_path), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


EVERY_STEP = (
    "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {every_n_train_steps: 1, save_top_k: -1,"
    " filename: 'step{step}', auto_insert_metric_name: false}}]"
)


@pytest.mark.slow
def test_two_rank_ddp_fit(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 16 problems / (2 ranks x 2 prompts) = 4 steps per epoch; step 5 is the first of the second epoch.
    ranks = run_two_ranks(tiny_model_dir, tmp_path, "--trainer.callbacks", EVERY_STEP, "--trainer.max_steps", "5")
    assert [r["step"] for r in ranks] == [5, 5]
    # The policy moved, and gradients were all-reduced: both ranks end with bit-identical weights although
    # each computed its loss on different prompts.
    assert ranks[0]["weights_sha256"] != ranks[0]["initial_sha256"]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # Each rank trained on its own prompts: 5 steps x 2 prompts each; within the first epoch no overlap.
    assert all(len(r["problems"]) == 10 for r in ranks)
    epoch = [set(r["problems"][:8]) for r in ranks]
    assert len(epoch[0] | epoch[1]) == 16

    # Resume on 2 ranks at the epoch's end (from step 4): each rank continues with exactly the prompts it would have
    # seen (a finished epoch is not skipped again), and the run ends with the uninterrupted run's weights. The
    # mid-epoch resume on 2 ranks is tests/health/test_checkpointing.py's kill -9 case (every metric equal).
    (ckpt,) = tmp_path.glob("**/step4.ckpt")
    resumed = run_two_ranks(tiny_model_dir, tmp_path / "resumed4", "--resume", str(ckpt), "--trainer.max_steps", "5")
    assert [r["step"] for r in resumed] == [5, 5]
    assert [r["problems"] for r in resumed] == [r["problems"][8:] for r in ranks]
    assert resumed[0]["weights_sha256"] == ranks[0]["weights_sha256"]


@pytest.mark.slow
def test_two_rank_dapo_token_count_and_batch_scaled_advantages(tiny_model_dir: Path, tmp_path: Path) -> None:
    """dapo divides by the loss tokens of all ranks / world size; scale_rewards=batch uses the std of all ranks."""
    ranks = run_two_ranks(
        tiny_model_dir, tmp_path, "--model.grpo.loss_type", "dapo", "--rollout.scale_rewards", "batch"
    )
    g = 6  # tiny_cpu.yaml's num_generations
    for step in range(2):
        mine = [r["rollouts"][step] for r in ranks]
        tokens = sum(m["tokens"][0] for m in mine)
        # Each rank's per-token loss is summed over its own tokens and divided by this; DDP then averages the
        # ranks' gradients, so the step is a token mean over the global batch.
        assert [m["global_active_tokens"][0] for m in mine] == [tokens / 2, tokens / 2]
        rewards = torch.tensor([x for m in mine for x in m["rewards"]])
        groups = rewards.view(-1, g)
        centred = (groups - groups.mean(dim=1, keepdim=True)).flatten()
        expected = centred / (rewards.std() + 1e-4)  # one std over both ranks' rewards
        got = torch.tensor([x for m in mine for x in m["advantages"]])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert rewards.std() > 0, "the check needs non-constant rewards"
