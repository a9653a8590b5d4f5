"""Line or sine? Which family each predictive function draw belongs to, against the oracle's posterior.

On line-or-sine tasks (PLATIPUS's ambiguity benchmark) a calibrated meta-learner's predictive should
hold lines and sines in the proportion of the Bayes-optimal posterior ``P(line | context)``. Each
function draw ``f_s`` on a dense grid is classified by least squares: a line ``a x + b`` against a
sinusoid ``A sin(x - phase) = c1 sin x + c2 cos x`` (the family's own forms), the smaller residual wins.
"""

from __future__ import annotations

from typing import Dict

import torch

__all__ = ["GRID", "line_fraction", "calibration"]

GRID = torch.linspace(-5.0, 5.0, 101)


def line_fraction(functions: torch.Tensor, grid: torch.Tensor = GRID) -> torch.Tensor:
    """Fraction of function draws nearer a line than a sinusoid: ``functions [S, T, G]`` -> ``[T]``."""
    x = grid.to(functions)
    design = {"line": torch.stack([x, torch.ones_like(x)], -1), "sine": torch.stack([x.sin(), x.cos()], -1)}
    rss = {}
    for name, A in design.items():  # [G, 2]: least squares per draw and task
        coef = torch.linalg.lstsq(A.expand(functions.shape[:-1] + A.shape), functions[..., None]).solution
        rss[name] = ((A @ coef)[..., 0] - functions).pow(2).sum(-1)  # [S, T]
    return (rss["line"] < rss["sine"]).to(functions.dtype).mean(0)


def calibration(frac_line: torch.Tensor, p_line: torch.Tensor, num_bins: int = 5) -> Dict[str, object]:
    """MAE ``mean_t |frac_t - P(line | ctx_t)|``, the binned calibration curve, and how often both families show.

    ``both_families``: over the ambiguous tasks (``0.2 <= P(line) <= 0.8``), the fraction where at least
    5% of the draws are lines and at least 5% are sines.
    """
    frac_line, p_line = frac_line.double(), p_line.double()
    edges = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64)
    curve = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (p_line >= lo) & ((p_line < hi) if hi < 1 else (p_line <= hi))
        if bool(sel.any()):
            curve.append((float(p_line[sel].mean()), float(frac_line[sel].mean()), int(sel.sum())))
    ambiguous = (p_line >= 0.2) & (p_line <= 0.8)
    both = ((frac_line >= 0.05) & (frac_line <= 0.95))[ambiguous]
    return {
        "mae": float((frac_line - p_line).abs().mean()),
        "curve": curve,
        "num_ambiguous": int(ambiguous.sum()),
        "both_families": float(both.double().mean()) if both.numel() else float("nan"),
    }
