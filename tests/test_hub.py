"""Local path or hub id, decided once: every branch of ``resolve``, offline (as every test runs)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from openrs_pl import hub as source
from openrs_pl.hub import SourceNotFoundError, resolve_dataset, resolve_model


def test_an_existing_folder_is_local_whatever_its_name(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_model_dir.parent)
    found = resolve_model(tiny_model_dir.name)  # a bare name, which could also be a hub id
    assert (found.where, found.location) == ("local", str(tiny_model_dir.resolve()))
    assert str(found) == f"local {tiny_model_dir.resolve()}"


def test_a_folder_without_config_json_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"is not a model folder \(no config.json\)"):
        resolve_model(str(tmp_path))
    assert resolve_dataset(str(tmp_path)).where == "local"  # a data folder needs none


@pytest.mark.parametrize("name", ["./runs/x", "/abs/missing", "~/missing", "a/b/c", "data/train.jsonl"])
def test_names_that_cannot_be_hub_ids_are_missing_paths(name: str) -> None:
    with pytest.raises(SourceNotFoundError, match=r": no such local model folder \(.*\); check the path$"):
        resolve_model(name)


def test_hub_id_offline_and_not_cached_fails_at_once_naming_both_readings() -> None:
    with pytest.raises(SourceNotFoundError) as info:
        resolve_model("runs/nomodel")
    message = str(info.value)
    assert "runs/nomodel: no such local model folder (" in message
    assert "hub model id 'runs/nomodel' is not in the local cache while the hub is unreachable" in message
    assert "(HF_HUB_OFFLINE is set)" in message and "\n" not in message


def test_hub_id_offline_but_cached_loads_the_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "cached_snapshot", lambda repo_id, repo_type: str(tmp_path))
    found = resolve_dataset("knoveleng/open-rs")
    assert (found.where, found.location) == ("hub-cache", str(tmp_path))


def test_hub_id_online_goes_to_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "hub_offline_reason", lambda: None)
    found = resolve_model("Qwen/Qwen2-0.5B")
    assert (found.where, found.location, str(found)) == ("hub", "Qwen/Qwen2-0.5B", "hub id Qwen/Qwen2-0.5B")


def test_an_unreachable_hub_fails_fast_without_hf_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not declared offline: one refused connection decides it (from_pretrained spent 52 s retrying)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(SourceNotFoundError, match=r"the hub is unreachable \(cannot connect to http://127.0.0.1:9: "):
        resolve_model("runs/nomodel")
    assert time.monotonic() - start < 5
