"""Shared fixtures: offline hub settings and one tiny Qwen2 checkpoint per test session."""

from __future__ import annotations

import os

# No model hub at test time: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from openrs_pl.models.tiny import save_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 causal LM + R1-style tokenizer saved as an HF folder (built once per session)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With several workers (``make test``), hand out the modules that hold slow tests first.

    pytest-xdist's ``--dist loadscope`` gives each worker whole modules in collection order; a slow module that came
    last would run alone at the end while the other worker idles. Order within a module is kept.
    """
    if not config.getoption("numprocesses", default=None):
        return
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)
