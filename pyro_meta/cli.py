"""``pyro-meta``: the command line (also ``python -m pyro_meta``), a thin layer over :mod:`pyro_meta.apps`.

::

    pyro-meta train    --config X.toml | --preset NAME [--out DIR] [--resume]   (--list-presets)
    pyro-meta evaluate --checkpoint Y [--config X.toml | --preset NAME] [--out DIR]
    pyro-meta predict  --checkpoint Y --data FILE.csv [--out FILE.csv] [--method M]
    pyro-meta demo     [--task sinusoid|omniglot] [--out DIR] [--steps N] [--smoke]
    pyro-meta --version

Common options: ``--seed`` (in ``[0, 2**32)``), ``--threads`` (1 to the number of CPUs),
``--no-progress``, ``--allow-module PKG`` (import model classes from ``PKG``).
Exit status: 0 success, 2 a bad command line or configuration (one line on stderr naming the
option, file or key), 1 a failure while running (one line; ``--traceback`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

__all__ = ["main"]

SEED_LIMIT = 2**32


def _max_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _threads(text: str) -> int:
    limit = _max_threads()
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= n <= limit:
        raise argparse.ArgumentTypeError(f"must be between 1 and {limit} (the CPUs available), got {n}")
    return n


def _seed(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= n < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {n}")
    return n


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def _common(p: argparse.ArgumentParser, seed_help: str, allow: bool = True) -> None:
    p.add_argument("--seed", type=_seed, default=None, help=seed_help)
    p.add_argument(
        "--threads",
        type=_threads,
        default=1,
        help=f"torch threads, 1 to {_max_threads()} (default: 1, as fast as more for small models)",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    if allow:
        p.add_argument(
            "--allow-module",
            action="append",
            default=[],
            metavar="PKG",
            help="trust the package PKG: model classes may be imported from it (repeatable)",
        )


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .apps.demo import DemoConfig

    parser = argparse.ArgumentParser(prog="pyro-meta", description="Bayesian meta-learning in Pyro.")
    parser.add_argument("--version", action="version", version=f"pyro-meta {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser(
        "train",
        help="meta-train a model from a TOML config; writes a checkpoint",
        description="Meta-trains the model of a TOML configuration (see README, 'Command line') "
        "and writes OUT/checkpoint.ckpt, resumable after a kill with --resume.",
    )
    src = train.add_mutually_exclusive_group()
    src.add_argument("--config", help="the TOML configuration file")
    src.add_argument("--preset", help="a shipped configuration by name (see --list-presets)")
    train.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    train.add_argument("--out", default="pyro_meta_train", help="output folder (default: ./pyro_meta_train)")
    train.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    train.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help="train this many steps in all, overriding train.num_steps (e.g. a quick trial of a preset)",
    )
    _common(train, "seed of training (default: the config's train.seed, else 0)")

    ev = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint's model (methods, context sizes from the config)",
        description="Rebuilds the model from a checkpoint alone and evaluates it as its recorded "
        "configuration (or --config / --preset) says; writes results.csv and results.md.",
    )
    ev.add_argument("--checkpoint", required=True, help="a checkpoint written by pyro-meta train")
    src = ev.add_mutually_exclusive_group()
    src.add_argument("--config", help="evaluate as this TOML configuration says (default: the recorded one)")
    src.add_argument("--preset", help="evaluate as this shipped preset says")
    ev.add_argument("--out", default=None, help="output folder (default: the checkpoint's folder)")
    _common(ev, "seed of the tasks and inference (default: the config's evaluate.seed, else 0)")

    pr = sub.add_parser(
        "predict",
        help="predict the target points of a CSV file with a checkpoint's model",
        description="Rows with an empty y are predicted, the others of the same task are its "
        "context; writes mean and 5%%/95%% quantiles (labels: class probabilities).",
    )
    pr.add_argument("--checkpoint", required=True, help="a checkpoint written by pyro-meta train")
    pr.add_argument("--data", required=True, help="CSV file: task id, x and y columns as the checkpoint's [data]")
    pr.add_argument("--out", default=None, help="output CSV (default: ./<data name>_predictions.csv)")
    pr.add_argument("--method", default=None, help="inference method (default: the config's first method)")
    pr.add_argument("--num-samples", type=_positive, default=None, help="posterior draws (default: the config's)")
    _common(pr, "seed of the inference (default: the config's evaluate.seed, else 0)")

    demo = sub.add_parser(
        "demo",
        help="meta-train and compare inference methods: a Neural Process on sinusoids, or classifiers on Omniglot",
        description=(
            f"--task sinusoid (default): meta-trains a latent NeuralProcess on noisy sinusoids "
            f"(Sinusoid(noise_std={DemoConfig.noise_std})), then on held-out tasks with 1, 3, 5 and 10 context points "
            "compares the amortized guide, per-task SVI, importance sampling and NUTS over the same model with "
            "pyro_meta.evaluate; prints and writes the table, the predictive-band figure and the NUTS posterior "
            "(NetCDF). --task omniglot: meta-trains ProtoNet and the Bayesian last layer on the shipped Omniglot "
            "alphabets and prints the 5-way 1-shot accuracy / NLL / ECE / Brier table on the meta-test alphabets "
            "(NUTS beside the amortized guide, R-hat and ESS per episode); writes the reliability and episode figures."
        ),
    )
    demo.add_argument("--task", choices=["sinusoid", "omniglot"], default="sinusoid", help="the demo's task family")
    demo.add_argument("--out", default="pyro_meta_demo", help="output folder (default: ./pyro_meta_demo)")
    demo.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help=f"meta-training steps (sinusoid default: {DemoConfig.num_steps}, "
        f"smoke: {DemoConfig().smoke().num_steps}; omniglot: every model's steps)",
    )
    demo.add_argument("--smoke", action="store_true", help="tiny sizes: runs in well under a minute")
    _common(demo, "seed of training, tasks and inference (default: 0)", allow=False)
    return parser


def _config(args) -> Optional[dict]:
    from .apps.config import load_config, preset_path

    if getattr(args, "preset", None):
        return load_config(preset_path(args.preset))
    if getattr(args, "config", None):
        return load_config(args.config)
    return None


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {_one_line(message)}\n"


def _run(args) -> int:
    import dataclasses

    import torch

    from .apps import commands
    from .apps.config import ConfigError, list_presets

    progress = not args.no_progress
    if args.command == "train" and args.list_presets:
        for name, text in list_presets().items():
            print(f"{name:20s} {text}")
        return 0
    torch.set_num_threads(args.threads)
    if args.command == "train":
        config = _config(args)
        if config is None:
            raise ConfigError("--config: give a configuration file (--config X.toml) or a preset (--preset NAME)")
        if args.steps is not None:
            config.setdefault("train", {})["num_steps"] = args.steps
        res = commands.train(
            config, args.out, resume=args.resume, seed=args.seed, progress=progress, allow=args.allow_module
        )
        return 1 if res["fit"].interrupted else 0
    if args.command == "evaluate":
        commands.evaluate(
            args.checkpoint, _config(args), out=args.out, seed=args.seed, progress=progress, allow=args.allow_module
        )
        return 0
    if args.command == "predict":
        commands.predict(
            args.checkpoint,
            args.data,
            out=args.out,
            method=args.method,
            num_samples=args.num_samples,
            seed=args.seed,
            allow=args.allow_module,
            progress=progress,
        )
        return 0
    commands.ensure_out_dir(args.out)
    if args.task == "omniglot":
        from .apps.omniglot_demo import OmniglotDemoConfig, run_omniglot_demo

        oconfig = OmniglotDemoConfig().smoke() if args.smoke else OmniglotDemoConfig()
        if args.seed is not None:
            oconfig = dataclasses.replace(oconfig, seed=args.seed)
        if args.steps is not None:
            oconfig = dataclasses.replace(oconfig, protonet_steps=args.steps, bll_steps=args.steps)
        run_omniglot_demo(oconfig, out_dir=args.out, progress=progress)
        return 0
    from .apps.demo import DemoConfig, run_demo

    config = DemoConfig().smoke() if args.smoke else DemoConfig()
    if args.steps is not None:
        config = dataclasses.replace(config, num_steps=args.steps)
    run_demo(config, out=args.out, seed=0 if args.seed is None else args.seed, progress=progress)
    return 0


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pyro-meta`` console script. Returns the exit status (argparse exits 2 itself)."""
    args = _parser().parse_args(argv)
    import warnings

    from .apps.config import ConfigError

    shown = warnings.formatwarning
    warnings.formatwarning = _warning_line  # one line per warning, no source line
    try:
        return _run(args)
    except ConfigError as e:
        print(f"pyro-meta {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyro-meta {args.command}: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a runtime failure: one line, the traceback on request
        if args.traceback:
            raise
        print(
            f"pyro-meta {args.command}: failed: {type(e).__name__}: {_one_line(e)} (--traceback shows where)",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
