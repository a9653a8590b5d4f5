"""``method="amortized"``: draws of the model's guide given each task's context."""

from __future__ import annotations

from .common import Problem
from .draws import to_posterior
from .method import InferenceMethod, InferenceResult, register_method

__all__ = ["Amortized"]


class Amortized(InferenceMethod):
    """``q(z_t | context_t)``: ``S`` draws of the model's guide given each task's context; no optimisation.

    The guide sees each task's context only (target set empty). Guides with an inner gradient loop
    run with gradients enabled; draws are detached. Samples ``{site: [1, S, T, *event]}``.
    A model without a task latent (a conditional model) gets a posterior with no samples whose
    predictive is the model's own (``S`` draws of ``y_target``).
    """

    name = "amortized"
    needs_task_latents = False

    def run(self, problem: Problem, num_samples: int) -> InferenceResult:
        if not problem.sites:
            return InferenceResult(samples={}, draws_shape=(1, num_samples))
        values = problem.guide_draws(num_samples)
        return InferenceResult(samples=to_posterior(values, problem.sites, 1))


register_method(Amortized())
