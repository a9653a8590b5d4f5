"""User models for the command-line tests (``model.name = "tests.apps.user_models:Class"``)."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_meta


class TinyClassifier(pyro_meta.MetaModel):
    """Per-task linear softmax classifier: ``W_t ~ N(0, I)`` ``[T, 1, Dx K]``, ``y ~ Cat(x W_t + b)``."""

    def __init__(self, x_dim: int = 2, num_classes: int = 2) -> None:
        super().__init__()
        self.x_dim, self.num_classes = x_dim, num_classes
        self.b = nn.Parameter(torch.zeros(num_classes))
        self.q_log_scale = nn.Parameter(torch.full((x_dim * num_classes,), -1.0))

    def model(self, batch):
        with pyro_meta.task_plate(batch):
            w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([self.x_dim * self.num_classes]).to_event(1))

            def likelihood(x):  # x [T, N, Dx] -> Categorical, batch shape [..., T, N]
                W = w.reshape(*w.shape[:-1], self.x_dim, self.num_classes)  # [..., T, 1, Dx, K]
                return dist.Categorical(logits=(x.unsqueeze(-1) * W).sum(-2) + self.b)

            pyro_meta.observe(batch, likelihood)

    def guide(self, batch):
        T = batch.num_tasks
        with pyro_meta.task_plate(batch):
            loc = torch.zeros(T, 1, self.x_dim * self.num_classes)
            pyro.sample("w", dist.Normal(loc, self.q_log_scale.exp()).to_event(1))
