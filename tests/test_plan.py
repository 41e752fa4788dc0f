"""``openrs-pl plan``: its memory formulas against the live tensor bytes of real CPU training steps, and its CLI.

The measurement counts every tensor storage the training step allocates (a ``TorchDispatchMode`` that adds a
storage's bytes when an op creates it and subtracts them when it is freed), so "peak" is the exact peak of live
tensor memory, the quantity a GPU's ``max_memory_allocated`` reports. Two tiny Qwen2 configs, one without and
one with gradient checkpointing, run two real optimizer steps each (``GRPOModule`` under a Lightning ``Trainer``:
reference pass, micro-batched forward/backward with chunked log-probs, AdamW step) on a fixed synthetic rollout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import DataLoader

from openrs_pl import plan
from openrs_pl.grpo import logprobs as logprobs_module
from openrs_pl.grpo.config import GRPOConfig, OptimConfig
from openrs_pl.grpo.module import GRPOModule
from openrs_pl.models.tiny import save_tiny_checkpoint
from openrs_pl.rollout.types import PromptBatch, RolloutBatch

ROOT = Path(__file__).parents[1]
TOLERANCE = 0.15


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages created while active and still alive; ``ignore`` = storages that pre-exist."""

    def __init__(self, ignore: list[torch.UntypedStorage]) -> None:
        super().__init__()
        self._ignore = {id(s) for s in ignore}
        self._keep_ignored_alive = ignore
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()  # one Python object per storage, alive as long as the storage
            key = id(storage)
            if key in self._live or key in self._ignore or storage.nbytes() == 0:
                continue  # a view, an in-place result or a parameter
            self._live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out


@dataclass(frozen=True)
class Case:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    prompt: int
    completion: int
    completions: int
    micro_batch: int
    chunk: int
    checkpointing: bool
    dtype: str = "float32"
    fused_adamw: bool = True


CASES = {
    "no-checkpointing": Case(128, 2, 2, 1, 256, prompt=32, completion=64, completions=8, micro_batch=2, chunk=2,
                             checkpointing=False),
    "checkpointing": Case(256, 3, 4, 1, 512, prompt=16, completion=48, completions=6, micro_batch=3, chunk=1,
                          checkpointing=True, fused_adamw=False),
    "bf16-checkpointing": Case(256, 2, 4, 2, 512, prompt=16, completion=48, completions=6, micro_batch=3, chunk=1,
                               checkpointing=True, dtype="bfloat16"),
}  # fmt: skip


def measure_training_step(model_dir: Path, case: Case) -> dict[str, int]:
    """Run two optimizer steps; return the live-tensor figures of the second (steady-state) step."""
    module = GRPOModule(
        str(model_dir),
        grpo=GRPOConfig(micro_batch_size=case.micro_batch, logprob_chunk_size=case.chunk),
        optim=OptimConfig(fused=case.fused_adamw),
        max_completion_length=case.completion,
        gradient_checkpointing=case.checkpointing,
        torch_dtype=case.dtype,
    )
    module.load_models()  # loads policy and reference now, so their storages count as the baseline
    models = (module.policy, module.reference)
    tracker = LiveTensorBytes([t.untyped_storage() for m in models for t in [*m.parameters(), *m.buffers()]])
    found: dict[str, int] = {"logits_kept": 0}
    phases: dict[str, list[int]] = {}

    def timed(name: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            before, outer_peak = tracker.current, tracker.peak
            tracker.peak = before
            out = fn(*args, **kwargs)
            phases.setdefault(name, []).append(tracker.peak - before)
            tracker.peak = max(outer_peak, tracker.peak)
            return out

        return run

    def kept(fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            before = tracker.current
            out = fn(*args, **kwargs)
            phases.setdefault("forward_kept", []).append(tracker.current - before)
            return out

        return run

    selective = logprobs_module._SelectiveLogSoftmax.apply

    def count_logits(logits: torch.Tensor, *args: Any) -> torch.Tensor:
        if torch.is_grad_enabled():  # the logits this Function saves for backward
            found["logits_kept"] += logits.untyped_storage().nbytes()
        return selective(logits, *args)

    module._score_logprobs = timed("nograd_logprob_pass", module._score_logprobs)
    module._micro_batch_loss = kept(module._micro_batch_loss)
    module.manual_backward = timed("backward", module.manual_backward)

    class Rollout(L.Callback):
        """A fixed full-length rollout (no generation), then the tracker around the step."""

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: PromptBatch, batch_idx: int) -> None:
            g = torch.Generator().manual_seed(batch_idx)
            n, p, c, v = case.completions, case.prompt, case.completion, pl_module.policy.config.vocab_size
            batch.rollout = RolloutBatch(
                prompt_ids=torch.randint(3, v, (n, p), generator=g),
                prompt_mask=torch.ones(n, p, dtype=torch.long),
                completion_ids=torch.randint(3, v, (n, c), generator=g),
                completion_mask=torch.ones(n, c, dtype=torch.long),
                rewards=torch.zeros(n),
                reward_per_func=torch.zeros(n, 1),
                advantages=torch.randn(n, generator=g),
                truncated=torch.zeros(n, dtype=torch.bool),
            )
            found["logits_kept"] = 0
            phases.clear()
            tracker.peak = tracker.current
            tracker.__enter__()

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
            tracker.__exit__(None, None, None)

    optimizer_step = torch.optim.AdamW.step

    def count_gradients(step: Any) -> Any:
        def run(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            found["gradients"] = sum(
                p.grad.nbytes for g in self.param_groups for p in g["params"] if p.grad is not None
            )
            return step(self, *args, **kwargs)

        return run

    loader = DataLoader([[1]] * 2, batch_size=1, collate_fn=PromptBatch)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Rollout()],
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logprobs_module._SelectiveLogSoftmax, "apply", count_logits)
        patch.setattr(torch.optim.AdamW, "step", timed("optimizer_step", count_gradients(optimizer_step)))
        trainer.fit(module, loader)
    optimizer = trainer.optimizers[0]
    param_bytes = {"weights": sum(p.nbytes for p in module.policy.parameters())}
    param_bytes["reference"] = sum(p.nbytes for p in module.reference.parameters())
    forward_kept = phases["forward_kept"][-1]
    return {
        **param_bytes,
        "gradients": found["gradients"],
        "optimizer_states": sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)),
        "logits_kept": found["logits_kept"] // (case.completions // case.micro_batch),
        "activations": forward_kept - found["logits_kept"] // (case.completions // case.micro_batch),
        "nograd_logprob_pass": max(phases["nograd_logprob_pass"]),
        "backward_transient": phases["backward"][-1],  # the last micro-batch: gradients already exist
        "optimizer_step": phases["optimizer_step"][-1],
        "peak": tracker.peak + sum(param_bytes.values()),
    }


def planned(model_dir: Path, case: Case) -> dict[str, int]:
    from transformers import AutoConfig

    shape = plan.ModelShape.from_hf_config(AutoConfig.from_pretrained(model_dir))
    size = plan.DTYPE_BYTES[case.dtype]
    layout = plan.TrainLayout(
        ranks=1, zero_stage=None, weight_bytes=size, activation_bytes=size, micro_batch_size=case.micro_batch,
        prompt_length=case.prompt, completion_length=case.completion, logprob_chunk_size=case.chunk,
        reference=True, gradient_checkpointing=case.checkpointing, fused_optimizer=case.fused_adamw,
    )  # fmt: skip
    return plan.trainer_memory(shape, layout)


@pytest.fixture(scope="module")
def measured_vs_planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict]]:
    out = {}
    for name, case in CASES.items():
        model_dir = save_tiny_checkpoint(
            tmp_path_factory.mktemp(name) / "model", hidden_size=case.hidden_size, num_layers=case.num_layers,
            num_heads=case.num_heads, num_kv_heads=case.num_kv_heads, intermediate_size=case.intermediate_size,
        )  # fmt: skip
        out[name] = (measure_training_step(model_dir, case), planned(model_dir, case))
    return out


COMPONENTS = [
    "weights", "reference", "gradients", "optimizer_states", "activations", "logits_kept", "backward_transient",
    "nograd_logprob_pass", "optimizer_step", "peak",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("component", COMPONENTS)
def test_planned_memory_matches_the_measured_training_step(
    measured_vs_planned: dict, case: str, component: str
) -> None:
    measured, planned_ = measured_vs_planned[case]
    if measured[component] == 0:  # the fused AdamW step allocates nothing
        assert planned_[component] == 0, (component, planned_[component])
        return
    error = planned_[component] / measured[component] - 1
    print(f"{case} {component}: measured {measured[component]} planned {planned_[component]} error {error:+.1%}")
    assert abs(error) <= TOLERANCE, (component, measured[component], planned_[component])


# ------------------------------------------------------------------------------------------------ the command
def test_param_count_formula_matches_a_real_qwen2_of_the_recipe_shape() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = plan.R1_DISTILL_QWEN_1_5B
    config = Qwen2Config(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, tie_word_embeddings=shape.tie_word_embeddings, dtype="bfloat16",
    )  # fmt: skip
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    assert shape.num_params() == sum(p.numel() for p in model.parameters()) == 1_777_088_000
    assert plan.ModelShape.from_hf_config(config) == shape


def run_console_script(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "openrs-pl"
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_console_script_plans_exp3_offline_as_json() -> None:
    proc = run_console_script("plan", "--config", "configs/openrs_exp3.yaml", "--json", "--gpu-memory", "40")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    p = 1_777_088_000
    t = result["trainer"]
    # 3 ranks, ZeRO-2, bf16: the ZeRO paper's 2 + 2 + 12 bytes per parameter, grads and optimizer sharded by 3
    assert (result["num_params"], result["layout"]["ranks"], result["layout"]["zero_stage"]) == (p, 3, 2)
    assert (t["weights"], t["reference"]) == (2 * p, 2 * p)
    assert (t["master_weights"], t["optimizer_states"], t["gradients"]) == (4 * p // 3, 8 * p // 3, 2 * p // 3)
    # micro-batch of 6 rows, logits for 3584 + 1 positions over 151,936 tokens in bf16
    assert t["logits_kept"] == 6 * 3585 * 151936 * 2
    v = result["vllm"]
    # dedicated engine: 3 ranks x 4 prompts x G=6 sequences of 512 + 3584 tokens; 28 layers x 2 x 2 heads x 128 x 2 B
    assert (v["sequences"], v["seq_len"], v["kv_bytes_per_token"]) == (72, 4096, 28 * 2 * 2 * 128 * 2)
    assert v["kv_cache"] == 72 * 4096 * 28672
    assert result["fits"]["trainer"] == {"24": False, "48": True, "80": True, "40": True}
    assert result["fits"]["vllm"] == {"24": True, "48": True, "80": True, "40": True}


@pytest.mark.parametrize("config", ["openrs_exp1", "openrs_exp2", "openrs_exp3"])
def test_plan_prints_the_table_for_every_recipe_config(config: str, capsys: pytest.CaptureFixture) -> None:
    from openrs_pl.cli import main

    assert main(["plan", "--config", f"configs/{config}.yaml"]) == 0
    out = capsys.readouterr().out
    assert "1.777B parameters" in out and "ZeRO-2" in out and "PEAK" in out and "KV cache" in out
    assert "trainer 24 GiB: NO  48 GiB: yes  80 GiB: yes" in out


def test_plan_overrides_change_the_layout(capsys: pytest.CaptureFixture) -> None:
    from openrs_pl.cli import main

    p = 1_777_088_000
    main(["plan", "--config", "configs/openrs_exp3.yaml", "--trainer.devices", "1", "--model.grpo.beta", "0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["layout"]["ranks"] == 1
    assert result["trainer"]["optimizer_states"] == 8 * p  # nothing to shard over
    assert result["trainer"]["reference"] == 0  # beta 0: no reference model
    assert result["vllm"]["sequences"] == 4 * 6  # one rank's prompts in flight


@pytest.mark.parametrize("fused", [True, False])
def test_plan_reads_the_optimizer_kind(fused: bool, capsys: pytest.CaptureFixture) -> None:
    """Without DeepSpeed the step's temporaries depend on ``optim.fused``: none fused, two embeddings' worth not."""
    from openrs_pl.cli import main

    args = ["--trainer.strategy", "ddp", "--model.optim.fused", str(fused).lower(), "--json"]
    main(["plan", "--config", "configs/openrs_exp3.yaml", *args])
    result = json.loads(capsys.readouterr().out)
    assert result["layout"]["zero_stage"] is None and result["layout"]["fused_optimizer"] is fused
    embedding = 151_936 * 1536 * 2  # the largest tensor, bf16
    assert result["trainer"]["optimizer_step"] == (0 if fused else 2 * embedding)


def test_plan_of_a_model_it_cannot_read_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from openrs_pl.cli import main

    assert main(["plan", "--config", "configs/tiny_cpu.yaml", "--model.name_or_path", str(tmp_path / "missing")]) == 2
    assert f"cannot read config.json of '{tmp_path / 'missing'}'" in capsys.readouterr().err


@pytest.mark.parametrize("sleep", [False, True])
def test_colocated_engine_shares_the_trainer_card_unless_it_sleeps(sleep: bool, capsys) -> None:
    from openrs_pl.cli import main

    args = ["--rollout.vllm.mode", "colocate", "--rollout.vllm.device", "null"]
    args += ["--rollout.vllm.enable_sleep_mode", str(sleep).lower()]
    main(["plan", "--config", "configs/openrs_exp3.yaml", *args, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["vllm"]["sequences"] == 4 * 6  # each rank's engine samples its own prompts
    # the trainer's ~29 GiB plus the 0.7 x card vLLM holds fits no card; asleep, vLLM gives its share back
    assert result["fits"]["trainer"] == {"24": False, "48": sleep, "80": sleep}


if __name__ == "__main__":  # print the figures: python tests/test_plan.py OUT_DIR
    for name, case in CASES.items():
        d = save_tiny_checkpoint(Path(sys.argv[1]) / name, hidden_size=case.hidden_size, num_layers=case.num_layers,
                                 num_heads=case.num_heads, num_kv_heads=case.num_kv_heads,
                                 intermediate_size=case.intermediate_size)  # fmt: skip
        m, p = measure_training_step(d, case), planned(d, case)
        for k in COMPONENTS:
            print(f"{name:18} {k:22} measured {m[k]:>11} planned {p[k]:>11} error {p[k] / m[k] - 1:+.1%}")
