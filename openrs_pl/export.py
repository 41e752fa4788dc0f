"""``openrs-pl export``: turn a training checkpoint into a plain Hugging Face folder (transformers, vLLM).

Reads both checkpoint layouts ``openrs-pl fit`` writes: a single ``.ckpt`` file (one device, DDP) and the
folder DeepSpeed writes under the same name (``step50.ckpt/checkpoint/...``), whose ZeRO-partitioned fp32 weights
are gathered with DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint``. The checkpoint is self-contained:
:class:`~openrs_pl.grpo.module.GRPOModule` stores the policy's config and tokenizer files in it (``hf_files``), so
the base-model folder the run started from is not needed (older checkpoints fall back to it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

HF_FILES_KEY = "hf_files"


@runtime_checkable
class HFExportable(Protocol):
    """A training module that can write its policy as a plain HF folder (what :class:`HFExport` calls)."""

    def export_hf(self, out_dir: str | Path) -> Path:
        """Save the policy and tokenizer under ``out_dir`` (loadable by transformers and vLLM); returns it."""
        ...


class ExportError(ValueError):
    """A checkpoint that cannot be exported; the message says what, where and how to fix it."""


def export_checkpoint(checkpoint: Path, out_dir: Path) -> Path:
    """Write a checkpoint's policy (weights, config, tokenizer) as an HF folder.

    Args:
        checkpoint: a .ckpt file, or the folder a DeepSpeed run writes under that name.
        out_dir: folder to write (created if missing; existing files of the same name are overwritten).
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output {str(out_dir)!r} is an existing file: give a folder path for the HF model")
    state, meta = read_checkpoint(checkpoint)
    weights = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    if not weights:
        raise ExportError(f"{str(checkpoint)!r} has no policy weights: not a checkpoint written by `openrs-pl fit`")
    with tempfile.TemporaryDirectory() as tmp:
        source = _hf_source(checkpoint, meta, Path(tmp))
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
        model.to(next(iter(weights.values())).dtype)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if k not in _tied_keys(model)]
        if missing or unexpected:
            raise ExportError(
                f"{str(checkpoint)!r} does not match its model config: missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}"
            )
        model.save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(source).save_pretrained(out_dir)
    return out_dir


def hf_files(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, bytes]:
    """The files ``save_pretrained`` writes for the model's config and the tokenizer (no weights), by name."""
    with tempfile.TemporaryDirectory() as tmp:
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(full-precision ``state_dict``, the rest of the checkpoint) of a Lightning file or DeepSpeed folder."""
    if not path.exists():
        raise ExportError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        return _read_deepspeed_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise ExportError(
            f"{str(path)!r} is not a checkpoint written by `openrs-pl fit` (torch.load: {type(err).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ExportError(f"{str(path)!r} is not a Lightning checkpoint (it has no state_dict)")
    return ckpt.pop("state_dict"), ckpt


def _read_deepspeed_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    client_files = sorted(path.glob("*/*model_states.pt"))
    if not client_files:
        raise ExportError(f"{str(path)!r} is a folder but not a DeepSpeed checkpoint (no */*model_states.pt)")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # Gathers the fp32 master weights from every rank's ZeRO partition (stages 1-3).
    state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=client_files[0].parent.name)
    meta = torch.load(client_files[0], map_location="cpu", weights_only=False)
    meta.pop("module", None)  # the half-precision weights; the fp32 ones are in `state`
    return state, meta


def _hf_source(checkpoint: Path, meta: dict[str, Any], tmp: Path) -> Path | str:
    """A folder (or hub id) with the policy's config and tokenizer files: from the checkpoint, else the base model."""
    files: dict[str, bytes] | None = meta.get(HF_FILES_KEY)
    if files:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        return tmp
    hparams = meta.get("hyper_parameters") or {}
    base = str(hparams.get("name_or_path", hparams.get("model", "")))  # "model" before the key was renamed
    try:
        AutoConfig.from_pretrained(base)
        return base
    except (OSError, ValueError):
        raise ExportError(
            f"{str(checkpoint)!r} has no saved model config (written by an older openrs-pl) and its base model "
            f"{base!r} cannot be loaded: restore that folder, or pass a checkpoint written by this version"
        ) from None


def _tied_keys(model: torch.nn.Module) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied if not isinstance(tied, dict) else tied.keys())
