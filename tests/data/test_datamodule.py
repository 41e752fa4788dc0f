"""ProblemDataModule: prompt text and ids, overlong drop/truncate counts, seeded order, rank-disjoint shards."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DistributedSampler
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from openrs_pl.data.datamodule import ProblemDataModule
from openrs_pl.data.prompts import OPENRS_SYSTEM_PROMPT
from openrs_pl.models.tiny import ASSISTANT, BOS, USER
from openrs_pl.rollout.types import PromptBatch

GENERATION_PROMPT = f"{ASSISTANT}<think>\n"


def make_rows(n: int) -> list[dict[str, object]]:
    # Problems of growing length so a small max_prompt_length splits them into short and overlong ones.
    return [
        {
            "problem": f"Problem {i}: " + "add the numbers " * i + "?",
            "answer": str(i),
            "solution": f"s{i}",
            "level": "Easy",
            "k": i,
        }
        for i in range(n)
    ]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in make_rows(16)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def ready(source: Path, tiny_model_dir: Path, **kwargs: object) -> ProblemDataModule:
    dm = ProblemDataModule(source=str(source), tokenizer=str(tiny_model_dir), **kwargs)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def epoch_order(dm: ProblemDataModule, rank: int = 0, world_size: int = 1, epoch: int = 0) -> list[int]:
    loader = dm.dataloader_for_rank(rank, world_size)
    loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
    return [k for batch in loader for k in batch.columns["k"]]


def test_prompt_text_and_ids(data_file: Path, tiny_model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    dm = ready(data_file, tiny_model_dir, max_prompt_length=4096)
    assert dm.num_prompts == 16
    for row in dm.rows:
        assert row["prompt"] == f"{BOS}{OPENRS_SYSTEM_PROMPT}{USER}{row['problem']}{GENERATION_PROMPT}"
        assert row["prompt_ids"] == tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        assert row["prompt_ids"].count(tokenizer.bos_token_id) == 1 and row["prompt_ids"][0] == tokenizer.bos_token_id
    no_system = ready(data_file, tiny_model_dir, system_prompt=None, max_prompt_length=4096)
    assert no_system.rows[3]["prompt"] == f"{BOS}{USER}{no_system.rows[3]['problem']}{GENERATION_PROMPT}"


def test_batches_are_prompt_batches_of_python_lists(data_file: Path, tiny_model_dir: Path) -> None:
    dm = ready(data_file, tiny_model_dir, prompts_per_step=4, max_prompt_length=4096)
    batches = list(dm.dataloader_for_rank(0, 1))
    assert len(batches) == 4
    batch = batches[0]
    assert isinstance(batch, PromptBatch) and len(batch) == 4
    # Every dataset column but the ids reaches the reward functions; nothing else is in the batch yet.
    assert set(batch.columns) == {"prompt", "problem", "answer", "solution", "level", "k"}
    assert batch.next_prompt_ids is None and batch.rollout is None
    assert all(isinstance(v, list) and len(v) == 4 for v in batch.columns.values())
    assert all(isinstance(ids, list) and all(isinstance(t, int) for t in ids) for ids in batch.prompt_ids)
    keys = batch.columns["k"]
    assert batch.columns["answer"] == [str(k) for k in keys] and batch.columns["solution"] == [f"s{k}" for k in keys]


@pytest.mark.parametrize("mode", ["drop", "truncate"])
def test_overlong_prompts_are_dropped_or_left_truncated_and_counted(
    data_file: Path,
    tiny_model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = ready(data_file, tiny_model_dir, max_prompt_length=4096)
    lengths = {row["k"]: len(row["prompt_ids"]) for row in full.rows}
    limit = sorted(lengths.values())[10]  # 11 prompts fit, 5 are longer
    overlong = {k for k, n in lengths.items() if n > limit}
    assert len(overlong) == 5
    with caplog.at_level(logging.WARNING, logger="openrs_pl.data"):
        dm = ready(data_file, tiny_model_dir, max_prompt_length=limit, overlong_prompts=mode)
    action = "dropped" if mode == "drop" else "left-truncated"
    assert f"{action} 5 of 16 prompts longer than {limit} tokens" in caplog.text
    assert all(len(row["prompt_ids"]) <= limit for row in dm.rows)
    if mode == "drop":
        assert {row["k"] for row in dm.rows} == set(lengths) - overlong
        assert (dm.stats["dropped_overlong"], dm.stats["truncated_overlong"], dm.num_prompts) == (5, 0, 11)
    else:
        full_ids = {row["k"]: row["prompt_ids"] for row in full.rows}
        assert all(row["prompt_ids"] == full_ids[row["k"]][-limit:] for row in dm.rows)
        assert all(row["prompt"].endswith(GENERATION_PROMPT) for row in dm.rows)
        truncated = [row for row in dm.rows if row["k"] in overlong]
        assert all(
            not row["prompt"].startswith(BOS) and tokenizer.decode(row["prompt_ids"]) == row["prompt"]
            for row in truncated
        )
        assert (dm.stats["dropped_overlong"], dm.stats["truncated_overlong"], dm.num_prompts) == (0, 5, 16)


def test_every_prompt_overlong_is_an_error(data_file: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="prompts are longer than 3 tokens; raise --data.max_prompt_length"):
        ready(data_file, tiny_model_dir, max_prompt_length=3)


def test_order_is_deterministic_from_the_seed_and_reshuffles_per_epoch(data_file: Path, tiny_model_dir: Path) -> None:
    a = ready(data_file, tiny_model_dir, seed=7, prompts_per_step=2, max_prompt_length=4096)
    b = ready(data_file, tiny_model_dir, seed=7, prompts_per_step=2, max_prompt_length=4096)
    c = ready(data_file, tiny_model_dir, seed=8, prompts_per_step=2, max_prompt_length=4096)
    assert epoch_order(a) == epoch_order(b) and sorted(epoch_order(a)) == list(range(16))
    # The torch.randperm a DistributedSampler draws with generator seed = seed + epoch.
    assert epoch_order(a) == torch.randperm(16, generator=torch.Generator().manual_seed(7)).tolist()
    assert epoch_order(a) != epoch_order(c)
    assert epoch_order(a, epoch=1) != epoch_order(a, epoch=0) and epoch_order(a, epoch=1) == epoch_order(b, epoch=1)


def test_two_ranks_get_disjoint_shards_covering_the_data(data_file: Path, tiny_model_dir: Path) -> None:
    dm = ready(data_file, tiny_model_dir, prompts_per_step=4, max_prompt_length=4096)
    for epoch in (0, 1):
        rank0, rank1 = (epoch_order(dm, rank, 2, epoch) for rank in (0, 1))
        assert len(rank0) == len(rank1) == 8
        assert set(rank0).isdisjoint(rank1) and set(rank0) | set(rank1) == set(range(16))


def test_uneven_data_keeps_ranks_in_step(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in make_rows(19)), encoding="utf-8")
    dm = ready(path, tiny_model_dir, prompts_per_step=4, max_prompt_length=4096)
    loaders = [dm.dataloader_for_rank(rank, 2) for rank in (0, 1)]
    # 19 rows -> 9 per rank (sampler drop_last) -> 2 full batches of 4 (loader drop_last).
    assert [len(loader) for loader in loaders] == [2, 2]
    assert all(len(batch) == 4 for loader in loaders for batch in loader)


def test_train_dataloader_uses_the_trainers_rank(data_file: Path, tiny_model_dir: Path) -> None:
    dm = ready(data_file, tiny_model_dir, max_prompt_length=4096)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)  # type: ignore[assignment]
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, DistributedSampler) and (sampler.rank, sampler.num_replicas, sampler.seed) == (1, 2, 42)
    assert epoch_order(dm, 1, 2) == [k for batch in dm.train_dataloader() for k in batch.columns["k"]]


class RecordingModule(pl.LightningModule):
    """Records the problems of each batch; a dummy loss keeps the optimizer happy."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []
        self.prompts: list[list[list[int]]] = []
        self.next_prompts: list[list[list[int]] | None] = []

    def training_step(self, batch: PromptBatch, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch.columns["k"])
        self.prompts.append(batch.prompt_ids)
        self.next_prompts.append(batch.next_prompt_ids)
        return (self.weight**2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_keeps_the_sampler_and_reshuffles_each_epoch(data_file: Path, tiny_model_dir: Path) -> None:
    dm = ProblemDataModule(source=str(data_file), max_prompt_length=4096, prompts_per_step=4, seed=3)
    dm.tokenizer = str(tiny_model_dir)  # linked after construction, as the CLI does
    module = RecordingModule()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    seen = [k for batch in module.seen for k in batch]
    assert seen[:16] == epoch_order(dm, epoch=0) and seen[16:] == epoch_order(dm, epoch=1)
    assert seen[:16] != seen[16:]


def test_bad_rows_are_counted_through_the_datamodule(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = make_rows(6)
    rows[2]["answer"] = None
    rows[4]["problem"] = rows[1]["problem"]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    dm = ready(path, tiny_model_dir, on_bad_row="skip", max_prompt_length=4096)
    assert dm.stats == {
        "loaded": 6,
        "skipped_bad_rows": 1,
        "duplicates": 1,
        "dropped_overlong": 0,
        "truncated_overlong": 0,
    }
    assert ready(path, tiny_model_dir, on_bad_row="skip", dedupe=True, max_prompt_length=4096).num_prompts == 4
    with pytest.raises(ValueError, match=r"p\.jsonl: row 2: field 'answer' is null"):
        ready(path, tiny_model_dir, max_prompt_length=4096)


def test_misuse_is_reported(data_file: Path) -> None:
    with pytest.raises(ValueError, match="needs a tokenizer"):
        ProblemDataModule(source=str(data_file)).setup("fit")
    with pytest.raises(RuntimeError, match="call setup"):
        ProblemDataModule(source=str(data_file)).dataloader_for_rank(0, 1)
    with pytest.raises(ValueError, match="overlong_prompts must be 'drop' or 'truncate'"):
        ProblemDataModule(overlong_prompts="cut")  # type: ignore[arg-type]


@pytest.mark.parametrize("lookahead", [False, True])
def test_resume_continues_after_the_batches_already_trained_on(
    data_file: Path, tiny_model_dir: Path, tmp_path: Path, lookahead: bool
) -> None:
    def fit(max_steps: int, ckpt_path: str | None = None) -> list[int]:
        dm = ProblemDataModule(
            source=str(data_file), max_prompt_length=4096, prompts_per_step=4, seed=3, lookahead=lookahead
        )
        dm.tokenizer = str(tiny_model_dir)
        module = RecordingModule()
        checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
        trainer = pl.Trainer(
            max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[checkpoint],
        )  # fmt: skip
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return [k for batch in module.seen for k in batch]

    order = fit(max_steps=2)  # batches 1-2 of epoch 0 (4 batches of 4 prompts per epoch)
    resumed = fit(max_steps=4, ckpt_path=str(tmp_path / "epoch=0-step=2.ckpt"))
    uninterrupted = epoch_order(ready(data_file, tiny_model_dir, max_prompt_length=4096, prompts_per_step=4, seed=3))
    # Nothing repeated, nothing skipped: the resumed run trains on exactly batches 3-4 of the same epoch.
    assert order == uninterrupted[:8]
    assert resumed == uninterrupted[8:16]


def test_lookahead_shows_each_batch_the_next_one_and_changes_nothing_else(
    data_file: Path, tiny_model_dir: Path
) -> None:
    def fit(lookahead: bool) -> RecordingModule:
        dm = ProblemDataModule(
            source=str(data_file), max_prompt_length=4096, prompts_per_step=4, seed=3, lookahead=lookahead
        )
        dm.tokenizer = str(tiny_model_dir)
        module = RecordingModule()
        trainer = pl.Trainer(
            max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(module, datamodule=dm)
        return module

    plain, ahead = fit(False), fit(True)
    assert ahead.seen == plain.seen and len(ahead.seen) == 8, "same batches, same order, both epochs"
    assert plain.next_prompts == [None] * 8
    # 4 batches per epoch: the last batch of an epoch cannot know the next epoch's shuffle.
    expected = [ahead.prompts[i + 1] if i % 4 != 3 else [] for i in range(8)]
    assert ahead.next_prompts == expected
