"""The data shipped inside the package (gzip-compressed JSONL), so a fresh clone needs no hub and no ../shared."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

BUNDLED_DIR = Path(__file__).parent


def bundled_path(name: str) -> Path:
    """Path of the bundled file ``name`` (e.g. ``"open_rs"``, ``"math500"``)."""
    path = BUNDLED_DIR / f"{name}.jsonl.gz"
    if not path.exists():
        known = sorted(p.name.removesuffix(".jsonl.gz") for p in BUNDLED_DIR.glob("*.jsonl.gz"))
        raise FileNotFoundError(f"no bundled data set {name!r}; bundled: {', '.join(known)}")
    return path


def read_bundled(name: str) -> Iterator[dict]:
    """Rows of a bundled data set, one dict per JSONL line."""
    with gzip.open(bundled_path(name), "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
