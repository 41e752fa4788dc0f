"""The recipe's strategy, DeepSpeed ZeRO-2, run for real on 2 CPU ranks (``deepspeed_stage_2_cpu``, gloo).

One subprocess (``zero_fit.py``) runs every phase, so the suite pays one start-up; the tests below each check one
property of what it recorded: (a) one optimizer step over M = 3 micro-batches equals DDP and a single-backward
full-batch reference, for bnpo and dapo; (b) bf16: the weights ``named_weights`` hands to the rollout engine are the
updated ones; (c) a ZeRO-2 checkpoint resumes and exports (console script) to an HF folder with the trained weights; (d)
ZeRO-3 is refused by the vLLM weight sync with a clear message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrs_pl.grpo.config import GRPOConfig, OptimConfig
from openrs_pl.grpo.loss import loss_mask
from openrs_pl.grpo.module import GRPOModule

ROOT = Path(__file__).parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "openrs-pl"
# float32 noise of a one-step update of ~4e-4 (measured: ZeRO-2 vs DDP 6e-8, vs the reference ~1e-7); dropping all
# but the last micro-batch (defect fixed by set_gradient_accumulation_boundary) changes it by ~1e-4.
ATOL = 1e-6


def problems(n: int = 16) -> list[dict[str, str]]:
    return [{"problem": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(n)]


@pytest.fixture(scope="module")
def eos_prone_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with EOS made likely after these prompts, so completions have different lengths (bnpo's
    per-micro-batch means then differ from dapo's global token normalisation)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p["problem"]}], add_generation_prompt=True, tokenize=False
        )
        for p in problems(8)
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state[batch.attention_mask.bool()]  # [T, H], after the final norm
        mean = hidden.mean(0)
        # Tied embeddings: EOS's logit rises by ~2 where the hidden state is near the mean.
        model.get_input_embeddings().weight[model.config.eos_token_id] += 2.0 * mean / mean.norm() ** 2
    out = tmp_path_factory.mktemp("eos_prone") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def runs(eos_prone_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zero")
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems()))
    env = os.environ | {"PYTHONPATH": str(ROOT), "OPENRS_GRADING_WORKERS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/grpo/zero_fit.py"), str(eos_prone_model_dir), str(data), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def load(runs: Path, phase: str) -> list[dict[str, Any]]:
    return [torch.load(runs / phase / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def update(record: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: record["final"][k] - record["initial"][k] for k in record["initial"]}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def reference_update(model_dir: Path, run_dir: Path, ranks: list[dict[str, Any]]) -> tuple[dict, float]:
    """The step's update computed in one process with one backward over both ranks' rollouts, no accumulation.

    Objective (what the distributed step must equal): bnpo averages the per-micro-batch losses over micro-batches
    and ranks; dapo sums token losses over everything and divides by the global token count. Then the same
    clipping (pre-clip norm returned) and AdamW step as the run's config.
    """
    full_config = yaml.safe_load(next(run_dir.rglob("config.yaml")).read_text())
    config, rollout = full_config["model"], full_config["rollout"]
    grpo = GRPOConfig(**config["grpo"])
    optim = OptimConfig(**{**config["optim"], "betas": tuple(config["optim"]["betas"])})
    module = GRPOModule(
        str(model_dir),
        grpo=grpo,
        optim=optim,
        temperature=rollout["temperature"],
        max_completion_length=rollout["max_completion_length"],
        torch_dtype="float32",
    )
    module.load_models()
    module.policy.train()
    assert max_diff(dict(module.policy.state_dict()), ranks[0]["initial"]) == 0
    rollouts = [module._score_logprobs(r["rollouts"][0]) for r in ranks]
    tokens = sum(
        float(loss_mask(r.completion_mask, r.truncated, grpo.mask_truncated_completions).sum()) for r in rollouts
    )
    total = torch.zeros(())
    for rollout in rollouts:
        micro_batches = list(rollout.micro_batches(grpo.micro_batch_size))
        assert len(micro_batches) == 3
        scale = 1.0 if grpo.loss_type == "dapo" else 1.0 / len(micro_batches)
        for mb in micro_batches:
            num_active_tokens = tokens / len(ranks) if grpo.loss_type == "dapo" else None
            loss = module._micro_batch_loss(mb, num_active_tokens, len(micro_batches))[0].loss
            total = total + loss * scale / len(ranks)
    total.backward()
    norm = torch.nn.utils.clip_grad_norm_(module.policy.parameters(), optim.max_grad_norm)
    opt = torch.optim.AdamW(
        module.policy.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
    )
    opt.step()
    after = {k: v.detach().float() for k, v in module.policy.state_dict().items()}
    return {k: after[k] - ranks[0]["initial"][k] for k in after}, float(norm)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["bnpo", "dapo"])
def test_zero2_step_equals_ddp_and_full_batch_reference(
    runs: Path, eos_prone_model_dir: Path, loss_type: str, capsys: pytest.CaptureFixture[str]
) -> None:
    zero, ddp = load(runs, f"zero2_{loss_type}"), load(runs, f"ddp_{loss_type}")
    # Same seeds, same rollouts; lengths vary (else bnpo and dapo coincide) and the ranks saw different prompts.
    for a, b in zip(zero, ddp, strict=True):
        assert torch.equal(a["rollouts"][0].completion_ids, b["rollouts"][0].completion_ids)
    lengths = torch.cat([r["rollouts"][0].completion_mask.sum(1) for r in zero])
    assert lengths.unique().numel() > 2
    assert not torch.equal(zero[0]["rollouts"][0].prompt_ids, zero[1]["rollouts"][0].prompt_ids)

    reference, ref_norm = reference_update(eos_prone_model_dir, runs / f"zero2_{loss_type}", zero)
    assert max(v.abs().max().item() for v in reference.values()) > 100 * ATOL  # the step moved the weights
    zero_vs_ddp = max_diff(update(zero[0]), update(ddp[0]))
    zero_vs_ref = max_diff(update(zero[0]), reference)
    ddp_vs_ref = max_diff(update(ddp[0]), reference)
    with capsys.disabled():
        print(
            f"\n{loss_type}: max|dW| zero2-ddp {zero_vs_ddp:.2e} zero2-ref {zero_vs_ref:.2e} ddp-ref {ddp_vs_ref:.2e}"
        )
    assert zero_vs_ddp < ATOL and zero_vs_ref < ATOL and ddp_vs_ref < ATOL
    assert max_diff(zero[0]["final"], zero[1]["final"]) == 0  # the ranks agree
    # Through gloo: DeepSpeed's shared-memory comm op was not JIT-built (shm_comm is off by default).
    assert [r["shm_comm_op"] for r in zero] == [False, False]
    # The logged grad norm is the pre-clip norm of the whole step's gradient (DeepSpeed: read from the engine).
    for record in (zero[0], ddp[0]):
        assert record["metrics"][0]["train/grad_norm"].item() == pytest.approx(ref_norm, rel=1e-4)
    assert ref_norm > 1.0  # so clipping (DeepSpeed's, from its config) was exercised


@pytest.mark.slow
def test_lr_and_grad_norm_reach_sync_dist_as_floats(runs: Path) -> None:
    # A CPU tensor under sync_dist=True crashes NCCL on GPU runs; floats (or tensors on the module's device) do not.
    for phase in ("zero2_bnpo", "ddp_bnpo"):
        types = load(runs, phase)[0]["synced_types"]
        assert types["train/lr"] == "float" and types["train/grad_norm"] == "float", (phase, types)


@pytest.mark.slow
def test_bf16_zero2_syncs_the_updated_weights_to_the_engine(runs: Path) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ranks = load(runs, "zero2_bf16")
    assert ranks[0]["global_step"] == 2
    ckpts = Path(ranks[0]["checkpoint_dir"])
    for step, synced in enumerate(ranks[0]["synced"], start=1):
        master = get_fp32_state_dict_from_zero_checkpoint(str(ckpts / f"step{step}.ckpt"), tag="checkpoint")
        assert all(t.dtype == torch.bfloat16 for t in synced.values())
        # What the engine receives after step k is the bf16 copy of the fp32 master weights after step k...
        assert max_diff(synced, {k.removeprefix("policy."): v.to(torch.bfloat16) for k, v in master.items()}) == 0
        assert max_diff(synced, ranks[1]["synced"][step - 1]) == 0
    # ... and it moved: not the pre-step weights.
    initial = {k: v.to(torch.bfloat16) for k, v in ranks[0]["initial"].items()}
    assert max_diff(ranks[0]["synced"][0], initial) > 0
    assert max_diff(ranks[0]["synced"][1], ranks[0]["synced"][0]) > 0


@pytest.mark.slow
def test_zero2_checkpoint_resumes_and_exports(runs: Path, tmp_path: Path) -> None:
    first, resumed = load(runs, "zero2_bf16")[0], load(runs, "zero2_bf16_resume")[0]
    # Resumed from step 1: its weights at the start are the step-1 weights, and it ran steps 2 and 3.
    assert max_diff(resumed["initial"], {k: v.float() for k, v in first["synced"][0].items()}) == 0
    assert resumed["global_step"] == 3 and len(resumed["synced"]) == 2
    # Optimizer (fp32 masters, Adam moments), schedule and data position came back: the resumed step 2 saw the same
    # rollout and made the same update as the uninterrupted run's step 2.
    assert torch.equal(resumed["rollouts"][0].completion_ids, first["rollouts"][1].completion_ids)
    assert max_diff(resumed["synced"][0], first["synced"][1]) == 0
    ckpt = Path(resumed["checkpoint_dir"]) / "step3.ckpt"
    assert ckpt.is_dir()
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "export", str(ckpt), str(tmp_path / "hf")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"exported to {tmp_path / 'hf'}" in proc.stdout
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    trained = resumed["synced"][-1]
    assert max_diff({k: v.to(torch.bfloat16) for k, v in exported.state_dict().items()}, trained) == 0
    # The export holds the fp32 master weights, not the bf16 copies the model computed with.
    assert exported.dtype == torch.float32 and max_diff(dict(exported.state_dict()), trained) > 0


@pytest.mark.slow
def test_zero3_is_refused_by_the_vllm_sync(runs: Path) -> None:
    ranks = load(runs, "zero3")
    for record in ranks:
        assert "ZeRO-3 partition" in record["sync_error"] and "ZeRO-0/1/2 only" in record["sync_error"]
