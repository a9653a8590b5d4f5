"""``method="prior"``: draws of the task latents from the meta-learned prior (prior predictive checks)."""

from __future__ import annotations

from .common import Problem
from .draws import to_posterior
from .method import InferenceMethod, InferenceResult, register_method

__all__ = ["Prior"]


class Prior(InferenceMethod):
    """Draws of the task latents from the meta-learned prior ``p(z)`` (prior predictive checks)."""

    name = "prior"

    def run(self, problem: Problem, num_samples: int) -> InferenceResult:
        values = problem.prior_draws(num_samples)
        return InferenceResult(samples=to_posterior(values, problem.sites, 1))


register_method(Prior())
