"""The run manifest: which model, prompt and sampling settings produced the completions in an output folder.

Resuming reuses completions already in ``output_dir``, so it must never reuse another run's: ``run.json`` records
what determines a completion (the model's weights fingerprint, the prompt template, temperature, top-p, the token
limit, the seed and the dtype) and a re-run whose settings differ is refused with the first differing setting
named. Settings that only select *which* completions to make (benchmarks, ``limit``, ``samples``) may change
between runs: that is what resume is for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from openrs_pl.data.prompts import format_eval_problem

MANIFEST_FILE = "run.json"
# Files of an HF model folder that change what it generates: weights by size + mtime (hashing GBs is too slow),
# the small ones by content.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_CONTENT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


class StaleOutputError(ValueError):
    """The output folder holds completions that another model or other settings produced."""


def model_fingerprint(model: str) -> str:
    """A fingerprint of a local model folder's weights and config, or ``hub:<id>`` for a hub id.

    Weight files count by name, size and modification time; config, tokenizer and chat template by content.
    """
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if file.name in _CONTENT_FILES:
            digest.update(f"{rel}\0".encode() + file.read_bytes())
        elif file.suffix in _WEIGHT_SUFFIXES:
            stat = file.stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "sha256:" + digest.hexdigest()


def prompt_fingerprint() -> str:
    """A fingerprint of the evaluation prompt template (the instruction around each problem)."""
    return "sha256:" + hashlib.sha256(format_eval_problem("{problem}").encode()).hexdigest()[:16]


def run_identity(
    model: str, temperature: float, top_p: float, max_new_tokens: int, seed: int, dtype: str
) -> dict[str, Any]:
    """The settings that determine a completion, in the order they are compared and reported."""
    return {
        "model_fingerprint": model_fingerprint(model),
        "prompt": prompt_fingerprint(),
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "dtype": dtype,
    }


def check_manifest(output_dir: Path, identity: dict[str, Any], model: str, has_completions: bool) -> None:
    """Refuse to resume from completions another run produced; write the manifest for a folder without any.

    Raises:
        StaleOutputError: ``output_dir`` holds completions but no manifest, or a manifest that differs from
            ``identity``; the message names the first differing setting and the two ways out.
    """
    path = output_dir / MANIFEST_FILE
    # A manifest without completions (a run that failed before its first batch) protects nothing: replaced.
    fix = f"use --output_dir NEW for a new folder, or --overwrite true to delete the completions in {output_dir}"
    if path.exists() and has_completions:
        stored = json.loads(path.read_text(encoding="utf-8"))
        for key, value in identity.items():
            if stored.get("identity", {}).get(key) != value:
                what = "model (weights or config)" if key == "model_fingerprint" else key
                there = stored.get("model") if key == "model_fingerprint" else stored.get("identity", {}).get(key)
                here = model if key == "model_fingerprint" else value
                raise StaleOutputError(
                    f"{output_dir} holds completions from a run with a different {what} "
                    f"({there!r} there, {here!r} now); {fix}"
                )
        return
    if has_completions:
        raise StaleOutputError(
            f"{output_dir} holds completions without a {MANIFEST_FILE} saying which model made them; {fix}"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "identity": identity}, indent=2) + "\n", encoding="utf-8")
