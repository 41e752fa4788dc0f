"""Which GRPO objective works on the demo task? Every ``loss_type`` x seeds, same warm start, same steps.

For each seed: one supervised warm start (``openrs_pl.demo.warm_start``, shared by all objectives of that seed), then
for each objective the same number of GRPO steps through the real ``openrs-pl fit`` path (``configs/tiny_cpu.yaml``),
then greedy held-out accuracy and length. Writes ``results.json`` and ``objectives.png`` under ``--out`` and, with
``--doc``, the table and plot into a Markdown page.

Objectives only differ once the importance ratio leaves 1, so the runs take ``--num-iterations`` (default 2)
optimizer steps per generation batch; with one step every objective here reduces to the plain policy gradient
up to its normalisation. Per-objective settings follow TRL 1.16's recommendations: cispo caps the ratio at
``epsilon_high=5.0`` (ScaleRL), luspo uses sequence-level ratios (its paper's setup).

    python scripts/compare_objectives.py --out runs/objectives --doc docs/objectives.md
    python scripts/compare_objectives.py --seeds 1 --steps 2 --loss-types grpo,sapo   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from openrs_pl.demo import evaluate, make_problems, warm_start
from openrs_pl.models.tiny import save_tiny_checkpoint

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
OBJECTIVE_ARGS: dict[str, list[str]] = {
    "cispo": ["--model.grpo.epsilon_high", "5.0"],
    "luspo": ["--model.grpo.importance_sampling_level", "sequence"],
}
METRICS = ("accuracy", "mean_length", "kl", "wall_s")


def run_grpo(sft: Path, data: Path, out: Path, loss_type: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One GRPO run from the warm start; returns held-out metrics, the final KL and the wall time of ``fit``."""
    import pandas as pd

    from openrs_pl.cli import cli_main

    start = time.perf_counter()
    cli = cli_main(
        [
            "fit", "--config", str(CONFIG),
            "--seed_everything", str(seed),
            "--model.name_or_path", str(sft),
            "--model.grpo.loss_type", loss_type,
            "--model.grpo.num_iterations", str(args.num_iterations),
            *OBJECTIVE_ARGS.get(loss_type, []),
            "--data.source", str(data),
            "--rollout.seed", str(seed),
            "--data.prompts_per_step", str(args.prompts_per_step),
            "--model.grpo.micro_batch_size", str(args.prompts_per_step * 6),
            "--trainer.max_steps", str(args.steps),
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(out),
            "--trainer.logger.init_args.save_dir", str(out),
        ]
    )  # fmt: skip
    wall = time.perf_counter() - start
    final = cli.model.export_hf(out / "final")
    metrics = pd.read_csv(Path(cli.trainer.logger.log_dir) / "metrics.csv")
    kl = metrics["train/kl"].dropna().tail(args.num_iterations * 5).mean()  # the last 5 generation batches
    return {**evaluate(final, args.heldout_rows), "kl": float(kl), "wall_s": wall}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per objective and metric: mean and sample std over seeds (std 0 for a single seed).

    >>> summarise([{"loss_type": "a", "accuracy": 0.2}, {"loss_type": "a", "accuracy": 0.4}])["a"]["accuracy"]
    (0.30000000000000004, 0.1414213562373095)
    """
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for loss_type in dict.fromkeys(r["loss_type"] for r in runs):
        rows = [r for r in runs if r["loss_type"] == loss_type]
        table[loss_type] = {}
        for m in (m for m in ("before_accuracy", *METRICS) if m in rows[0]):
            values = [r[m] for r in rows]
            table[loss_type][m] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return table


def markdown_table(table: dict[str, dict[str, tuple[float, float]]]) -> str:
    """The summary as a Markdown table, mean ± std over seeds.

    >>> print(markdown_table({"grpo": {"accuracy": (0.5, 0.1), "mean_length": (20.0, 1.0), "kl": (0.01, 0.0),
    ...                                "wall_s": (30.0, 2.0)}}))
    | loss_type | held-out accuracy | mean length (tokens) | KL (last 5 batches) | wall time (s) |
    |---|---|---|---|---|
    | grpo | 0.500 ± 0.100 | 20.0 ± 1.0 | 0.0100 ± 0.0000 | 30 ± 2 |
    """
    lines = [
        "| loss_type | held-out accuracy | mean length (tokens) | KL (last 5 batches) | wall time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, row in table.items():
        (acc, acc_sd), (length, length_sd) = row["accuracy"], row["mean_length"]
        (kl, kl_sd), (wall, wall_sd) = row["kl"], row["wall_s"]
        lines.append(
            f"| {name} | {acc:.3f} ± {acc_sd:.3f} | {length:.1f} ± {length_sd:.1f} | {kl:.4f} ± {kl_sd:.4f} "
            f"| {wall:.0f} ± {wall_sd:.0f} |"
        )
    return "\n".join(lines)


def plot(table: dict[str, dict[str, tuple[float, float]]], before: float, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    titles = {"accuracy": "held-out accuracy", "mean_length": "mean length (tokens)", "kl": "KL", "wall_s": "wall s"}
    for ax, metric in zip(axes, METRICS, strict=True):
        means = [table[n][metric][0] for n in names]
        stds = [table[n][metric][1] for n in names]
        ax.bar(names, means, yerr=stds, capsize=3, color="tab:blue")
        if metric == "accuracy":
            ax.axhline(before, color="gray", linestyle="--", label="warm start")
            ax.legend(fontsize=8)
        ax.set_title(titles[metric])
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle("GRPO objectives on the demo task (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


BEGIN, END = "<!-- compare_objectives: begin -->", "<!-- compare_objectives: end -->"


Summary = dict[str, dict[str, tuple[float, float]]]


def write_doc(doc: Path, table: Summary, before: float, settings: str, png: Path) -> None:
    """Put the table and plot between the BEGIN/END markers of ``doc`` (a fresh page if it has none)."""
    target_png = doc.parent / "objectives.png"
    target_png.write_bytes(png.read_bytes())
    block = (
        f"{BEGIN}\n{settings}\n\nWarm-start held-out accuracy (mean over seeds): {before:.3f}\n\n"
        f"{markdown_table(table)}\n\n![objectives]({target_png.name})\n{END}"
    )
    text = doc.read_text() if doc.exists() else f"# GRPO objectives on the demo task\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(head + block + tail)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/objectives"))
    p.add_argument("--doc", type=Path, default=None, help="Markdown page to write the table and plot into")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=42)
    p.add_argument("--prompts-per-step", type=int, default=16, help="prompts per generation batch (x G=6)")
    p.add_argument(
        "--from-results",
        type=Path,
        nargs="*",
        default=None,
        help="skip training: summarise these results.json files (e.g. seeds run as separate processes)",
    )
    p.add_argument("--steps", type=int, default=40, help="GRPO optimizer steps per run")
    p.add_argument("--num-iterations", type=int, default=2)
    p.add_argument("--sft-steps", type=int, default=120)
    p.add_argument("--loss-types", default=",".join(LOSS_TYPES))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        runs = [run for f in args.from_results for run in json.loads(f.read_text())["runs"]]
        return report(runs, args)
    runs: list[dict[str, Any]] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        root = args.out / f"seed{seed}"
        (root / "data").mkdir(parents=True, exist_ok=True)
        train, heldout = make_problems(seed, n_heldout=100)
        data = root / "data" / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in train))
        args.heldout_rows = heldout
        sft = warm_start(save_tiny_checkpoint(root / "base"), root / "sft", train, steps=args.sft_steps, seed=seed)
        before = evaluate(sft, heldout)
        print(f"[objectives] seed {seed}: warm start {before}", flush=True)
        for loss_type in args.loss_types.split(","):
            result = run_grpo(sft, data, root / loss_type, loss_type, seed, args)
            runs.append({"loss_type": loss_type, "seed": seed, "before_accuracy": before["accuracy"], **result})
            print(f"[objectives] seed {seed} {loss_type}: {result}", flush=True)
            (args.out / "results.json").write_text(json.dumps({"runs": runs}, indent=1))
    del args.heldout_rows
    return report(runs, args)


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Summary table, plot and ``results.json`` (and the doc page with ``--doc``) from the runs."""
    table = summarise(runs)
    before = statistics.mean(r["before_accuracy"] for r in runs)
    plot(table, before, args.out / "objectives.png")
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": table}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(markdown_table(table))
    if args.doc is not None:
        seeds = sorted({r["seed"] for r in runs})
        settings = (
            f"Measured by `scripts/compare_objectives.py --steps {args.steps} --num-iterations {args.num_iterations} "
            f"--prompts-per-step {args.prompts_per_step} --sft-steps {args.sft_steps}`, seeds {seeds}."
        )
        write_doc(args.doc, table, before, settings, args.out / "objectives.png")
    return result


if __name__ == "__main__":
    main()
