"""``openrs-pl report RUN_DIR``: one HTML page (and its PNGs) with a run's curves, sample completions, config and cost.

Reads what ``openrs-pl fit`` writes into the CSV logger's directory: ``metrics.csv``, ``completions.jsonl``
(:mod:`openrs_pl.completions`), ``config.yaml`` (LightningCLI) and ``run.json`` (:mod:`openrs_pl.console`).
``RUN_DIR`` is that directory or any folder above it (the newest ``metrics.csv`` below it is used). Writes
``RUN_DIR/report/index.html`` and one PNG per panel next to it.
"""

from __future__ import annotations

import argparse
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from openrs_pl.completions import read_jsonl
from openrs_pl.cost import PAPER_USD_PER_GPU_HOUR, RunCost


@dataclass(frozen=True)
class Panel:
    """One PNG: a title and the metric columns it plots (those present in the run)."""

    name: str
    title: str
    columns: tuple[str, ...]
    ylabel: str = ""


def panels_for(columns: list[str]) -> list[Panel]:
    """The report's panels for a run's metric columns, in reading order; panels with no column are left out.

    >>> [p.name for p in panels_for(["step", "train/reward/mean", "train/rewards/format/mean", "train/kl"])]
    ['reward', 'reward_format', 'kl']
    """
    reward_funcs = sorted(c for c in columns if c.startswith("train/rewards/") and c.endswith("/mean"))
    val = sorted(c for c in columns if c.startswith("val/pass@1/"))
    entropy = sorted(c for c in columns if "entropy" in c)
    candidates = [
        Panel("reward", "total reward (train, mean per step)", ("train/reward/mean",), "reward"),
        *[
            Panel(f"reward_{c.split('/')[2]}", f"reward: {c.split('/')[2]} (train, mean per step)", (c,), "reward")
            for c in reward_funcs
        ],
        Panel("val_pass1", "validation pass@1 per benchmark", tuple(val), "pass@1"),
        Panel(
            "length",
            "completion length (tokens) and truncation ratio",
            ("train/completions/mean_length", "train/completions/max_length", "train/completions/clipped_ratio"),
            "tokens",
        ),
        Panel("kl", "KL to the reference", ("train/kl",), "KL"),
        Panel("clip_ratio", "clip ratios", ("train/clip_ratio", "train/clip_ratio/low", "train/clip_ratio/high")),
        Panel("grad_norm", "gradient norm (before clipping)", ("train/grad_norm",)),
        Panel("lr", "learning rate", ("train/lr",)),
        Panel("entropy", "entropy", tuple(entropy)),
        Panel("time", "time per step: generation / training / sync (s)", ("train/time/step",), "seconds"),
    ]
    present = set(columns)
    return [
        Panel(p.name, p.title, tuple(c for c in p.columns if c in present), p.ylabel)
        for p in candidates
        if any(c in present for c in p.columns)
    ]


def time_split(df: pd.DataFrame) -> pd.DataFrame:
    """Per logged step: generation, sync and training (= step - generation - sync) seconds.

    >>> time_split(pd.DataFrame({"step": [0], "train/time/step": [3.0], "train/time/generation": [1.0]}))
       step  generation  sync  training
    0     0         1.0   0.0       2.0
    """
    rows = df.dropna(subset=["train/time/step"])
    gen = rows.get("train/time/generation", pd.Series(0.0, index=rows.index)).fillna(0.0)
    sync = rows.get("train/time/sync", pd.Series(0.0, index=rows.index)).fillna(0.0)
    out = pd.DataFrame({"step": rows["step"], "generation": gen, "sync": sync})
    out["training"] = (rows["train/time/step"] - gen - sync).clip(lower=0.0)
    return out.reset_index(drop=True)


def run_cost(df: pd.DataFrame, info: dict[str, Any], gpus: int | None, usd_per_gpu_hour: float | None) -> RunCost:
    """Cost from the last logged ``train/time/elapsed``; GPUs, price and max_steps from ``run.json`` unless given."""
    timed = df.dropna(subset=["train/time/elapsed"]) if "train/time/elapsed" in df else df.iloc[0:0]
    last = timed.iloc[-1] if len(timed) else None
    steps_done = int(last["step"]) + 1 if last is not None else 0
    return RunCost(
        gpus=int(info.get("gpus", 0)) if gpus is None else gpus,
        steps_done=steps_done,
        max_steps=int(info.get("max_steps", steps_done)),
        elapsed_s=float(last["train/time/elapsed"]) if last is not None else 0.0,
        usd_per_gpu_hour=float(info.get("usd_per_gpu_hour", PAPER_USD_PER_GPU_HOUR))
        if usd_per_gpu_hour is None
        else usd_per_gpu_hour,
    )


def find_log_dir(run_dir: Path) -> Path:
    """``run_dir`` if it holds ``metrics.csv``, else the folder of the newest ``metrics.csv`` below it."""
    if (run_dir / "metrics.csv").is_file():
        return run_dir
    found = sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no metrics.csv in or below {run_dir}: is it a run directory of `openrs-pl fit`?")
    return found[-1].parent


def plot_panel(df: pd.DataFrame, panel: Panel, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    if panel.name == "time":
        split = time_split(df)
        parts = ["generation", "training", "sync"]
        ax.stackplot(split["step"], *[split[p] for p in parts], labels=parts)
    else:
        for col in panel.columns:
            if col.endswith("clipped_ratio"):
                continue
            rows = df.dropna(subset=[col])
            if panel.name == "lr":  # a schedule, not a noisy signal
                ax.plot(rows["step"], rows[col], lw=2, label=col.removeprefix("train/"))
                continue
            line = ax.plot(rows["step"], rows[col], alpha=0.3, lw=1)[0]
            smooth = rows[col].rolling(10, min_periods=1).mean()
            ax.plot(
                rows["step"], smooth, color=line.get_color(), lw=2, label=col.removeprefix("train/") + " (10-step mean)"
            )
        clipped = [c for c in panel.columns if c.endswith("clipped_ratio")]
        if clipped:
            twin = ax.twinx()
            rows = df.dropna(subset=clipped)
            twin.plot(rows["step"], rows[clipped[0]], color="black", ls="--", lw=1, label="truncated ratio")
            twin.set_ylim(0, 1.05)
            twin.set_ylabel("truncated ratio")
            twin.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(panel.ylabel)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def write_report(
    run_dir: Path, out_dir: Path | None = None, gpus: int | None = None, usd_per_gpu_hour: float | None = None
) -> Path:
    """Write ``index.html`` and the panel PNGs; returns the HTML path."""
    log_dir = find_log_dir(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else log_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(log_dir / "metrics.csv")
    info = json.loads((log_dir / "run.json").read_text()) if (log_dir / "run.json").is_file() else {}
    completions = read_jsonl(log_dir / "completions.jsonl") if (log_dir / "completions.jsonl").is_file() else []
    config = (log_dir / "config.yaml").read_text() if (log_dir / "config.yaml").is_file() else "(no config.yaml)"
    panels = panels_for(list(df.columns))
    for panel in panels:
        plot_panel(df, panel, out / f"{panel.name}.png")
    cost = run_cost(df, info, gpus, usd_per_gpu_hour)
    page = render_html(log_dir, panels, cost, completions, config, info)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def render_html(
    log_dir: Path, panels: list[Panel], cost: RunCost, completions: list[dict], config: str, info: dict[str, Any]
) -> str:
    esc = html.escape
    figures = "\n".join(
        f'<figure><figcaption>{esc(p.title)}</figcaption><img src="{p.name}.png" alt="{esc(p.title)}"></figure>'
        for p in panels
    )
    cost_items = "".join(f"<li>{esc(line)}</li>" for line in cost.lines())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>openrs-pl report: {esc(str(log_dir))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 0.8em; }}
figure {{ margin: 0; }} figcaption {{ font-weight: 600; font-size: 0.9em; }} img {{ width: 100%; }}
table {{ border-collapse: collapse; font-size: 0.8em; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
td.c {{ font-family: monospace; white-space: pre-wrap; max-width: 60em; }}
pre {{ background: #f6f6f6; padding: 0.6em; font-size: 0.75em; max-height: 30em; overflow: auto; }}
</style></head><body>
<h1>openrs-pl run report</h1>
<p>{esc(str(log_dir))} &middot; model {esc(str(info.get("model", "?")))} &middot; {cost.steps_done} of
{cost.max_steps} steps</p>
<h2>Cost</h2><ul>{cost_items}</ul>
<h2>Curves</h2><div class="grid">
{figures}
</div>
<h2>Sample completions</h2>
{samples_table(completions)}
<h2>Resolved config</h2><pre>{esc(config)}</pre>
</body></html>
"""


def samples_table(rows: list[dict], per_step: int = 4) -> str:
    """The first and the last recorded step's first completions as an HTML table."""
    if not rows:
        return "<p>(no completions.jsonl: the completions table is recorded every `completions.every_n_steps`)</p>"
    steps = sorted({r["step"] for r in rows})
    shown = [r for s in dict.fromkeys([steps[0], steps[-1]]) for r in [r for r in rows if r["step"] == s][:per_step]]
    reward_cols = [c for c in rows[0] if c.startswith("reward/")]
    head = ["step", "prompt", "completion", "reward", *reward_cols, "advantage", "length", "truncated"]
    body = "\n".join(
        "<tr>" + "".join(_cell(c, r.get(c)) for c in head) + "</tr>"
        for r in shown  # fmt: skip
    )
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>\n{body}</table>"


def _cell(column: str, value: Any) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    cls = ' class="c"' if column in ("prompt", "completion") else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="openrs-pl report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run's log directory (or a folder above it)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: LOG_DIR/report)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to bill (default: from run.json)")
    parser.add_argument(
        "--usd-per-gpu-hour",
        type=float,
        default=None,
        help=f"price of a GPU-hour (default: from run.json, else the paper's ${PAPER_USD_PER_GPU_HOUR})",
    )
    a = parser.parse_args(argv)
    try:
        path = write_report(a.run_dir, a.out, a.gpus, a.usd_per_gpu_hour)
    except FileNotFoundError as err:
        parser.exit(2, f"openrs-pl report: error: {err}\n")
    print(f"wrote {path} and {len(list(path.parent.glob('*.png')))} PNGs")


if __name__ == "__main__":
    main()
