"""What a run costs in GPU-hours and dollars, so far and projected to ``max_steps``.

The reference point is the Open-RS paper (Dang & Ngo 2025, arXiv:2503.16219, Tables 2-3): one node of 4 NVIDIA
A40 GPUs for 24 hours, "Cost Est. $42", i.e. 96 GPU-hours at $42 / 96 = $0.4375 per GPU-hour.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_GPUS = 4
PAPER_HOURS = 24.0
PAPER_COST_USD = 42.0
PAPER_USD_PER_GPU_HOUR = PAPER_COST_USD / (PAPER_GPUS * PAPER_HOURS)
"""$0.4375: the paper's $42 for 4 x A40 x 24 h, the default price of a GPU-hour."""


@dataclass(frozen=True)
class RunCost:
    """GPU time and money of a run so far, and projected linearly to its last step."""

    gpus: int
    steps_done: int
    max_steps: int
    elapsed_s: float
    usd_per_gpu_hour: float

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.elapsed_s / 3600.0

    @property
    def usd(self) -> float:
        return self.gpu_hours * self.usd_per_gpu_hour

    @property
    def projected_gpu_hours(self) -> float:
        """GPU-hours at ``max_steps`` if the remaining steps take as long as the ones done (0 with no step done)."""
        if self.steps_done <= 0:
            return 0.0
        return self.gpu_hours * max(self.max_steps, self.steps_done) / self.steps_done

    @property
    def projected_usd(self) -> float:
        return self.projected_gpu_hours * self.usd_per_gpu_hour

    def lines(self) -> list[str]:
        """Human-readable lines, the same in the end-of-fit summary and in ``openrs-pl report``.

        >>> RunCost(gpus=4, steps_done=50, max_steps=500, elapsed_s=9000.0, usd_per_gpu_hour=0.4375).lines()[0]
        'GPU-hours so far: 10.00 (4 GPUs x 2.50 h, 50 steps) = $4.38 at $0.4375/GPU-h'
        """
        if self.gpus == 0:
            return [f"no GPU used: {self.elapsed_s / 3600:.3f} h of CPU time, $0 at GPU prices"]
        return [
            f"GPU-hours so far: {self.gpu_hours:.2f} ({self.gpus} GPUs x {self.elapsed_s / 3600:.2f} h, "
            f"{self.steps_done} steps) = ${self.usd:.2f} at ${self.usd_per_gpu_hour:.4f}/GPU-h",
            f"projected to max_steps={self.max_steps}: {self.projected_gpu_hours:.2f} GPU-hours = "
            f"${self.projected_usd:.2f} (paper: {PAPER_GPUS} x A40 x {PAPER_HOURS:.0f} h = ${PAPER_COST_USD:.0f})",
        ]
