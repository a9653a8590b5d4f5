"""Writes the example CSV files of ``examples/`` (noisy sinusoids as a long table, one row per point).

``python examples/make_example_data.py`` rebuilds them byte for byte: ``sine_tasks.csv`` (24 tasks
to train on), ``sine_tasks_eval.csv`` (8 other tasks to evaluate on), ``sine_predict.csv`` (3 new
tasks: 5 observed points each and 10 inputs with an empty ``y`` to predict). Each task is
``y = A sin(x - phase) + 0.1 eps`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, ``x ~ U[-5, 5]``
(:class:`pyro_meta.data.Sinusoid`), seeded.
"""

import csv
import os

import torch

from pyro_meta.data import Sinusoid

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name: str, num_tasks: int, num_points: int, seed: int, first_id: int, predict: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    batch = Sinusoid(noise_std=0.1).sample(num_tasks, num_points, predict or 1, generator=generator)
    with open(os.path.join(HERE, name), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["task_id", "x", "y"])
        for t in range(num_tasks):
            for x, y in zip(batch.context_x[t, :, 0].tolist(), batch.context_y[t, :, 0].tolist()):
                w.writerow([first_id + t, f"{x:.4f}", f"{y:.4f}"])
            if predict:
                for x in torch.linspace(-5, 5, predict).tolist():
                    w.writerow([first_id + t, f"{x:.4f}", ""])


if __name__ == "__main__":
    write("sine_tasks.csv", 24, 20, seed=1, first_id=0)
    write("sine_tasks_eval.csv", 8, 20, seed=2, first_id=100)
    write("sine_predict.csv", 3, 5, seed=3, first_id=200, predict=10)
