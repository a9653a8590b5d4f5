"""Few-shot classification on the shipped Omniglot: meta-train, score 5-way 1-shot, draw calibration and an episode.

:func:`run_omniglot_demo` meta-trains two models of the zoo on episodes of the meta-training alphabets
(no file outside the package, no network) and scores them on episodes of the two meta-test alphabets,
whose characters were never seen, through :func:`pyro_meta.evaluate`:

* :class:`~pyro_meta.models.ProtoNet` -- the metric baseline (its amortized predictive is Snell et al.'s);
* :class:`~pyro_meta.models.BayesianLastLayer` -- a shared Conv-4 with a Bayesian linear head per task, once
  with its amortized guide and once with NUTS (the exact posterior of the same model) on the first episodes.

It prints and writes a table (accuracy with its 95% interval, NLL, ECE, Brier, seconds), a reliability
diagram per row (``reliability.png``) and one episode with the predicted class probabilities
(``episode.png``). ``OmniglotDemoConfig()`` is the full demo (about 6-8 minutes on a free 2-core CPU);
``OmniglotDemoConfig().smoke()`` runs in seconds (tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

from ..data import OMNIGLOT_SPLITS, Episodes, OmniglotEpisodes, load_omniglot
from ..evaluation import EvaluationTable, evaluate
from ..inference import fit
from ..model import MetaModel

__all__ = ["OmniglotDemoConfig", "feature_memo", "omniglot_training_episodes", "run_omniglot_demo"]

SizeArg = Union[int, Tuple[int, int]]


def omniglot_training_episodes(
    way: int,
    shots: SizeArg,
    queries: SizeArg,
    alphabets: Sequence[str] = OMNIGLOT_SPLITS["train"] + OMNIGLOT_SPLITS["val"],
    shift: int = 0,
) -> Episodes:
    """Episodes over the shipped meta-training alphabets (default: train + val, 155 characters) with rotations.

    Rotations by 90, 180 and 270 degrees are new classes (the MAML protocol): 620 classes by default. The
    meta-test alphabets (``OMNIGLOT_SPLITS["test"]``) are never included. ``shift``: random translations of
    up to that many pixels per drawn image (:class:`~pyro_meta.data.Episodes`), a training augmentation.
    """
    overlap = set(alphabets).intersection(OMNIGLOT_SPLITS["test"])
    if overlap:
        raise ValueError(f"alphabets: {sorted(overlap)} are meta-test alphabets")
    return Episodes.from_images(
        load_omniglot(), groups=list(alphabets), way=way, shots=shots, queries=queries, rotations=True, shift=shift
    )


@contextlib.contextmanager
def feature_memo(model: MetaModel, images: torch.Tensor) -> Iterator[None]:
    """Serve the model's shared features of ``images [M, D]`` by lookup in the block (models without one: no-op).

    Uses ``model.features`` or ``model.backbone`` (a :class:`~pyro_meta.models._features.FeatureExtractor`)
    when present: its ``memoize`` computes every image's features once, so that evaluating many episodes
    drawn from the same images runs the network once per image (eval mode, weights unchanged).
    """
    extractor = getattr(model, "features", None) or getattr(model, "backbone", None)
    if extractor is None or not hasattr(extractor, "memoize"):
        yield
        return
    with extractor.memoize(images):
        yield


@dataclasses.dataclass(frozen=True)
class OmniglotDemoConfig:
    """Every setting of the Omniglot demo (the defaults are the full demo; :meth:`smoke` is the test one).

    Training: ProtoNet on ``protonet_way``-way 1-shot episodes, the Bayesian last layer on ``bll_way``-way
    episodes with 1-5 shots (its guide sees every context size), both ``queries`` queries per class, one
    episode per step, Adam at ``lr``; Conv-4 with ``channels`` channels on 28 x 28 images. Evaluation:
    ``episodes`` seeded 5-way 1-shot episodes of the meta-test alphabets with ``eval_queries`` queries per
    class, ``num_samples`` posterior draws; NUTS on the first ``nuts_episodes`` of another seeded draw
    (reported beside the amortized guide on the same episodes). ECE with ``ece_bins`` bins.
    """

    channels: int = 64
    protonet_way: int = 20
    protonet_steps: int = 1200
    bll_way: int = 20
    bll_shots: Tuple[int, int] = (1, 5)
    bll_steps: int = 800
    bll_feature_dim: int = 16
    queries: int = 5
    lr: float = 1e-3
    eval_way: int = 5
    eval_shots: int = 1
    eval_queries: int = 15
    episodes: int = 600
    num_samples: int = 50
    nuts_episodes: int = 50
    nuts_warmup: int = 100
    nuts_samples: int = 100
    nuts_chains: int = 2
    nuts_max_tree_depth: int = 6
    ece_bins: int = 15
    seed: int = 0

    def smoke(self) -> "OmniglotDemoConfig":
        """A tiny configuration (seconds): 4 channels, a few steps, a few episodes."""
        return dataclasses.replace(
            self,
            channels=4,
            protonet_way=5,
            protonet_steps=3,
            bll_way=5,
            bll_steps=3,
            bll_feature_dim=3,
            queries=2,
            eval_queries=2,
            episodes=6,
            num_samples=4,
            nuts_episodes=2,
            nuts_warmup=4,
            nuts_samples=4,
            nuts_max_tree_depth=3,
        )

    def test_episodes(self) -> OmniglotEpisodes:
        return OmniglotEpisodes("test", way=self.eval_way, shots=self.eval_shots, queries=self.eval_queries)


def _train(
    name: str, model: MetaModel, tasks: Episodes, steps: int, config: OmniglotDemoConfig, progress: bool
) -> float:
    t0 = time.perf_counter()
    fit(model, tasks, num_steps=steps, tasks_per_batch=1, lr=config.lr, seed=config.seed, progress=progress)
    seconds = time.perf_counter() - t0
    print(f"{name}: {steps} meta-training steps in {seconds:.0f} s", flush=True)
    return seconds


def _fmt_list(values: torch.Tensor, digits: int = 3) -> str:
    return "[" + ", ".join(f"{float(v):.{digits}f}" for v in values) + "]"


def format_rows(table: EvaluationTable) -> str:
    """Markdown: model, method, episodes, accuracy +- 95% interval, NLL, ECE, Brier, seconds (train / inference)."""
    head = "| model | method | episodes | accuracy (95% CI) | NLL | ECE | Brier | train s | inference s |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        ci = 1.96 * r.get("accuracy_se", float("nan"))
        lines.append(
            f"| {r['model']} | {r['method']} | {r['num_tasks']} | {100 * r['accuracy']:.1f} +- {100 * ci:.1f} | "
            f"{r['nll']:.3f} | {r['ece']:.3f} | {r['brier']:.3f} | {r.get('train_seconds', float('nan')):.0f} | "
            f"{r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run_omniglot_demo(
    config: Optional[OmniglotDemoConfig] = None,
    out_dir: Union[str, os.PathLike] = "omniglot_demo",
    progress: bool = True,
) -> Dict[str, Any]:
    """Meta-train ProtoNet and the Bayesian last layer on Omniglot, score 5-way 1-shot, write the table and figures.

    Parameters
    ----------
    config : OmniglotDemoConfig, optional
        Default ``OmniglotDemoConfig()`` (the full demo); ``OmniglotDemoConfig().smoke()`` for a quick run.
    out_dir : path
        Where ``results.md``, ``results.csv``, ``reliability.png`` and ``episode.png`` are written (created).
    progress : bool
        Progress bars for training and evaluation.

    Returns
    -------
    dict with ``table`` (:class:`~pyro_meta.EvaluationTable`), ``markdown``, ``models`` (name -> trained model),
    ``nuts`` (the NUTS posterior: per-task ``diagnostics["r_hat"]``, ``["ess_bulk"]``), ``paths`` and ``seconds``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..models import BayesianLastLayer, ProtoNet
    from ..plot_classification import plot_episode, plot_reliability

    config = OmniglotDemoConfig() if config is None else config
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    protonet = ProtoNet(image_shape=(1, 28, 28), channels=config.channels)
    torch.manual_seed(config.seed)
    bll = BayesianLastLayer(image_shape=(1, 28, 28), channels=config.channels, feature_dim=config.bll_feature_dim)
    train_seconds = {
        "ProtoNet": _train(
            "ProtoNet",
            protonet,
            omniglot_training_episodes(config.protonet_way, 1, config.queries),
            config.protonet_steps,
            config,
            progress,
        ),
        "BayesianLastLayer": _train(
            "BayesianLastLayer",
            bll,
            omniglot_training_episodes(config.bll_way, config.bll_shots, config.queries),
            config.bll_steps,
            config,
            progress,
        ),
    }
    test = config.test_episodes()
    images = load_omniglot("test").images.reshape(-1, 28 * 28)
    common = {"num_context": config.eval_shots, "seed": config.seed, "ece_bins": config.ece_bins, "progress": progress}
    nuts_options = {
        "nuts": {
            "num_samples": config.nuts_samples,
            "num_warmup": config.nuts_warmup,
            "num_chains": config.nuts_chains,
            "max_tree_depth": config.nuts_max_tree_depth,
        }
    }
    rows = EvaluationTable()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # short NUTS chains warn about mixing; the table shows R-hat
        for name, model in (("ProtoNet", protonet), ("BayesianLastLayer", bll)):
            with feature_memo(model, images):
                rows = rows + evaluate(
                    {name: model},
                    test,
                    methods=["amortized"],
                    num_tasks=config.episodes,
                    num_samples=config.num_samples if name != "ProtoNet" else 1,
                    **common,
                )
        # NUTS and the amortized guide on the same (fewer) episodes: another seeded draw
        nuts_rows = EvaluationTable()
        posteriors: Dict[Tuple[str, str], Any] = {}
        for name, model, methods in (
            ("ProtoNet", protonet, ["amortized"]),
            ("BayesianLastLayer", bll, ["amortized", "nuts"]),
        ):
            with feature_memo(model, images):
                nuts_rows = nuts_rows + evaluate(
                    {name: model},
                    test,
                    methods=methods,
                    num_tasks=config.nuts_episodes,
                    num_samples=(config.num_samples if name != "ProtoNet" else 1),
                    method_options=nuts_options,
                    callback=lambda row, post: posteriors.__setitem__((row["model"], row["method"]), post),
                    **dict(common, seed=config.seed + 1),
                )
    rows = rows + nuts_rows
    for r in rows:
        r["train_seconds"] = train_seconds[r["model"]]
    nuts = posteriors[("BayesianLastLayer", "nuts")]
    markdown = format_rows(rows)
    print(
        f"\n{config.eval_way}-way {config.eval_shots}-shot on the meta-test alphabets "
        f"({', '.join(OMNIGLOT_SPLITS['test'])}), {config.eval_queries} queries per class:\n"
    )
    print(markdown)
    print(
        f"NUTS per task (the {config.nuts_episodes} episodes of seed {config.seed + 1}): R-hat "
        f"{_fmt_list(nuts.diagnostics['r_hat'])}; bulk ESS {_fmt_list(nuts.diagnostics['ess_bulk'], 0)}"
    )
    paths = {
        "markdown": os.path.join(out_dir, "results.md"),
        "csv": os.path.join(out_dir, "results.csv"),
        "reliability": os.path.join(out_dir, "reliability.png"),
        "episode": os.path.join(out_dir, "episode.png"),
    }
    with open(paths["markdown"], "w") as f:
        f.write(markdown)
    rows.to_csv(paths["csv"])

    # reliability diagrams and an episode, from the runs of the table on the NUTS episodes
    preds = {}
    for label, key, model in (
        ("ProtoNet", ("ProtoNet", "amortized"), protonet),
        ("BLL amortized", ("BayesianLastLayer", "amortized"), bll),
        ("BLL NUTS", ("BayesianLastLayer", "nuts"), bll),
    ):
        with feature_memo(model, images):
            preds[label] = posteriors[key].predict()
    nuts_batch = nuts.batch
    fig = plot_reliability(
        preds,
        bins=config.ece_bins,
        title=f"{config.eval_way}-way {config.eval_shots}-shot, {config.nuts_episodes} meta-test episodes",
    )
    fig.savefig(paths["reliability"], dpi=110)
    plt.close(fig)
    fig = plot_episode(nuts_batch, preds["BLL NUTS"].class_probs, task=0, class_names=test.class_names, max_queries=10)
    fig.savefig(paths["episode"], dpi=90)
    plt.close(fig)
    seconds = time.perf_counter() - t_start
    print(f"wrote {', '.join(paths.values())}; total {seconds:.0f} s")
    return {
        "table": rows,
        "markdown": markdown,
        "models": {"ProtoNet": protonet, "BayesianLastLayer": bll},
        "nuts": nuts,
        "paths": paths,
        "seconds": seconds,
    }
