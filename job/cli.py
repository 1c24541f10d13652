"""The command line: `python -m job VERB …`, one verb per role.

Exit codes (DESIGN §4): 0 success; 2 bad input (config, data, model YAML, arguments)
with one line naming the key or file and no traceback; 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from job import __version__
from job.config import ConfigError, load_config
from job.data import DataError, load_data
from job.model import ModelError, load_model_spec, model_spec_yaml
from job.train import EpochRecord, Recipe, TrainError, TrainResult, train

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(ValueError):
    """Bad command-line input; exit 2."""


def _print_epoch(record: EpochRecord) -> None:
    print(
        f"epoch {record.epoch:>3}  loss {record.train_loss:.4f}  "
        f"val acc {record.val_accuracy:.4f}  lr {record.lr:.4f}  {record.seconds:.1f}s",
        flush=True,
    )


def _summary(result: TrainResult) -> str:
    return (
        f"test accuracy {result.test_accuracy:.4f}  macro-F1 {result.test_f1:.4f}  "
        f"val accuracy {result.val_accuracy:.4f}\n"
        f"params {result.params:,}  MACs {result.macs:,}  "
        f"latency {result.latency_ms_b1:.3f} ms/img (b1), "
        f"{result.latency_ms_b256:.4f} ms/img (b256)\n"
        f"{result.train_images_per_s:,.0f} train images/s on {result.device}, "
        f"{result.seconds:.1f}s in all"
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Train one architecture from a model YAML with the config's data and recipe."""
    config = load_config(args.config)
    spec = load_model_spec(args.model)
    recipe = Recipe.from_config(config.train)
    if args.epochs is not None:
        recipe = replace(recipe, epochs=args.epochs)
    if args.device is not None:
        recipe = replace(recipe, device=args.device)
    data = load_data(config.data)
    print(
        f"data {data.name}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test, {data.num_classes} classes, fingerprint {data.fingerprint[:12]}",
        flush=True,
    )
    try:
        result = train(spec, config.augment.policy(), recipe, data, on_epoch=_print_epoch)
    except TrainError as exc:
        if exc.reason == "invalid_network":
            raise ModelError(f"{args.model}: {exc}") from None
        raise
    print(_summary(result))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.yaml").write_text(model_spec_yaml(spec), encoding="utf-8")
        metrics = asdict(result) | {"data_fingerprint": data.fingerprint, "version": __version__}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        print(f"wrote {out / 'model.yaml'} and {out / 'metrics.json'}")
    return EXIT_OK


def cmd_augment_preview(args: argparse.Namespace) -> int:
    """Every op of the policy list at three magnitudes, on real photos and data images."""
    from job.preview import write_preview

    config = load_config(args.config)
    path = write_preview(config, Path(args.out), size=args.size)
    print(f"wrote {path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m job",
        description="Search small, accurate image classifiers: architectures and "
        "RandAugment policies as one multi-objective study.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("train", help="train one architecture from a model YAML")
    p.add_argument("--config", required=True, help="search config YAML (data, augment, train)")
    p.add_argument("--model", required=True, help="model YAML in the seed's format")
    p.add_argument("--out", help="folder for model.yaml and metrics.json (default: none)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser(
        "augment-preview", help="PNG grid: every op at three magnitudes on photos and data"
    )
    p.add_argument("--config", required=True, help="search config YAML (data, augment)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--size", type=int, default=96, help="side of each tile in pixels (default 96)")
    p.set_defaults(func=cmd_augment_preview)
    return parser


_BAD_INPUT: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    ModelError,
    UsageError,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse itself exits 2 on bad arguments
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainError as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except torch.OutOfMemoryError as exc:
        print(f"error: out of memory: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_ERROR
