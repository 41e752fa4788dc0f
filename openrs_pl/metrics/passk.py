"""The unbiased pass@k estimator (Chen et al. 2021) as a pure function and as a DDP-safe ``torchmetrics.Metric``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchmetrics
from torch import Tensor


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem from ``n`` samples of which ``c`` are correct.

    The probability that at least one of ``k`` samples drawn without replacement from the ``n`` is correct::

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

    The product form avoids the huge binomials of the first form (Chen et al. 2021, "Evaluating Large Language
    Models Trained on Code", Fig. 3). pass@1 reduces to ``c / n``, the mean accuracy over the samples.

    Args:
        n: Samples drawn for the problem (>= 1).
        c: How many of them are correct (0 <= c <= n).
        k: Attempt budget (1 <= k <= n).

    Returns:
        The estimate, in [0, 1].

    Raises:
        ValueError: If the counts are inconsistent.

    >>> pass_at_k(4, 1, 1)
    0.25
    >>> round(pass_at_k(4, 1, 2), 4)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(5, 4, 2)  # fewer than k wrong samples: every k-subset holds a correct one
    1.0
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


class PassAtK(torchmetrics.Metric):
    """Mean unbiased pass@k over problems, for several ``k`` at once.

    The states are the per-problem sample and correct counts, concatenated across processes
    (``dist_reduce_fx="cat"``), so under DDP ``compute()`` sees exactly the problems every rank saw and returns
    what a single process would. Each ``update`` must carry all samples of its problems: counts of one problem
    split over two updates would be scored as two problems.

    Args:
        ks: The attempt budgets to report; every problem must have at least ``max(ks)`` samples.

    >>> metric = PassAtK(ks=(1, 2))
    >>> metric.update(torch.tensor([[True, False], [False, False]]))  # 2 problems x 2 samples
    >>> {name: round(value.item(), 4) for name, value in metric.compute().items()}
    {'pass@1': 0.25, 'pass@2': 0.5}
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    # Per-update [problems] count tensors (add_state registers them). A synced compute() may briefly see one
    # concatenated tensor instead of the list; _as_tensor reads either.
    num_samples: list[Tensor]
    num_correct: list[Tensor]

    def __init__(self, ks: Sequence[int] = (1,), **kwargs) -> None:
        super().__init__(**kwargs)
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty list of positive integers, got {list(ks)}")
        self.ks = sorted(set(ks))
        self.add_state("num_samples", default=[], dist_reduce_fx="cat")
        self.add_state("num_correct", default=[], dist_reduce_fx="cat")

    def update(self, correct: Tensor, num_samples: Tensor | None = None) -> None:
        """Add problems, either as a verdict matrix or as per-problem counts.

        Args:
            correct: Either a bool ``[problems, samples]`` verdict matrix, or (with ``num_samples``) the
                per-problem correct counts ``[problems]``.
            num_samples: Per-problem sample counts ``[problems]`` when ``correct`` holds counts.

        Raises:
            ValueError: On a wrong shape, inconsistent counts or fewer samples than ``max(ks)``.
        """
        if num_samples is None:
            if correct.ndim != 2:
                raise ValueError(f"a verdict matrix must be [problems, samples], got shape {tuple(correct.shape)}")
            num_samples = torch.full((correct.shape[0],), correct.shape[1], device=correct.device)  # [P]
            correct = correct.bool().sum(dim=1)  # [P]
        if correct.ndim != 1 or correct.shape != num_samples.shape:
            raise ValueError(
                f"counts must be two [problems] tensors, got {tuple(correct.shape)} and {tuple(num_samples.shape)}"
            )
        if bool((correct < 0).any()) or bool((correct > num_samples).any()):
            raise ValueError("correct counts must lie in [0, num_samples]")
        if bool((num_samples < self.ks[-1]).any()):
            raise ValueError(f"pass@{self.ks[-1]} needs at least {self.ks[-1]} samples for every problem")
        self.num_samples.append(num_samples.long())
        self.num_correct.append(correct.long())

    def compute(self) -> dict[str, Tensor]:
        """``{"pass@k": mean over problems}`` for each k (NaN when no problem was added)."""
        n = _as_tensor(self.num_samples).tolist()
        c = _as_tensor(self.num_correct).tolist()
        out = {}
        for k in self.ks:
            scores = [pass_at_k(ni, ci, k) for ni, ci in zip(n, c, strict=True)]
            out[f"pass@{k}"] = torch.tensor(sum(scores) / len(scores) if scores else float("nan"), dtype=torch.float64)
        return out


def _as_tensor(state: list[Tensor] | Tensor) -> Tensor:
    """A ``cat`` state is a list of tensors before sync and may be a single tensor after it."""
    if isinstance(state, Tensor):
        return state.flatten()
    return torch.cat(state) if state else torch.zeros(0, dtype=torch.long)
