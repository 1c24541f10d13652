"""Verbs on one network, below the search: `train` (one network from a model YAML or a
pick's card) and `augment-preview` (the augment ops as one PNG). The only verbs that
import torch at once."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job import __version__
from job.config import AugmentConfig, TrainConfig, load_config
from job.errors import EXIT_OK, UsageError
from job.files import write_atomic
from job.ml.data import load_data
from job.ml.model import ModelError, ModelSpec, load_model_spec, model_spec_yaml
from job.ml.train import (
    EpochRecord,
    TrainError,
    TrainResult,
    check_batch,
    check_fit,
    resolve_device,
    train,
)

if TYPE_CHECKING:  # imported where used: `train` and `status` need no Optuna worker
    pass


from job.cli.common import check_folder


def _print_epoch(record: EpochRecord) -> None:
    print(
        f"epoch {record.epoch:>3}  loss {record.train_loss:.4f}  "
        f"val acc {record.val_accuracy:.4f}  lr {record.lr:.4f}  {record.seconds:.1f}s",
        flush=True,
    )


def _summary(result: TrainResult, latency: dict[str, float]) -> str:
    timed = ", ".join(f"{key} {ms:.4f} ms/img" for key, ms in latency.items()) or "not timed"
    return (
        f"test accuracy {result.test_accuracy:.4f}  macro-F1 {result.test_f1:.4f}  "
        f"val accuracy {result.val_accuracy:.4f}\n"
        f"params {result.params:,}  MACs {result.macs:,}  "
        f"latency {timed}\n"
        f"{result.train_images_per_s:,.0f} train images/s on {result.device}, "
        f"{result.seconds:.1f}s in all"
    )


def read_card(path: str) -> dict[str, Any]:
    """A selected model's card.json (`collect` writes it); `UsageError` naming the file
    when it cannot be read or lacks what retraining needs."""
    from job.files import MAX_INT_DIGITS, json_problem

    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--card: {path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"--card: {path}: not a card (not JSON)") from None
    except RecursionError:
        raise UsageError(f"--card: {path}: not a card (nested too deeply)") from None
    except ValueError:  # Python's limit on an integer's digits
        raise UsageError(
            f"--card: {path}: not a card (an integer of more than {MAX_INT_DIGITS} digits)"
        ) from None
    if (problem := json_problem(card)) is not None:  # deep nesting, Infinity, NaN
        raise UsageError(f"--card: {path}: not a usable card: {problem}")
    need = ("model_yaml", "recipe", "augment", "data_fingerprint")
    missing = [key for key in need if not isinstance(card, dict) or key not in card]
    if missing:
        raise UsageError(f"--card: {path}: not a card (no {', '.join(missing)})")
    return dict(card)


def _from_card(card: dict[str, Any], path: str) -> tuple[ModelSpec, AugmentConfig, TrainConfig]:
    """The card's network, augmentation policy and recipe (seed included): what the
    verification retrain that made its weights trained."""
    import pydantic
    import yaml

    from job.config import describe_errors
    from job.files import yaml_problem
    from job.ml.model import spec_from_yaml
    from job.search.retrain import policy_of

    key = "model_yaml"  # each problem names the card's key at fault, not the config's
    try:
        spec = spec_from_yaml(str(card[key]))
        key = "augment"
        augment = policy_of(card[key])
        key = "recipe"
        recipe = TrainConfig.model_validate(card[key])
    except pydantic.ValidationError as exc:
        problem = describe_errors(exc, key)
    except yaml.YAMLError as exc:
        problem = f"{key}: {yaml_problem(exc)}"
    except (ModelError, ValueError) as exc:
        problem = f"{key}: {(str(exc).splitlines() or ['invalid'])[0]}"
    else:
        return spec, augment, recipe
    raise UsageError(f"--card: {path}: not a usable card: {problem}")


def _card_check(card: dict[str, Any], accuracy: float) -> str:
    """This run's test accuracy against the card's verified mean ± std."""
    verified = card.get("verified") or {}
    mean, std = verified.get("mean"), verified.get("std")
    if not isinstance(mean, float) or not isinstance(std, float):
        return "card: no verified accuracy to compare with"
    gap = accuracy - mean
    verdict = "within" if abs(gap) <= std + CARD_TOLERANCE else "OUTSIDE"
    return (
        f"card: verified {mean:.4f} ± {std:.4f}; this run {accuracy:.4f} "
        f"({gap:+.4f}): {verdict} its std + {CARD_TOLERANCE}"
    )


# How far a rerun may land from the card's mean beyond its std: threads and BLAS builds
# round differently, so a rerun on another machine is close, not bit-identical.
CARD_TOLERANCE = 0.01


def cmd_train(args: argparse.Namespace) -> int:
    """Train one architecture from a model YAML with the config's data and recipe, or
    retrain a selected model from its card (`--card`: its network, augmentation and
    recipe, on train + validation, as verification trained it). Every input is checked
    before the first epoch: config, output folder, model or card, device, data, batch
    size and the network's fit to the data."""
    from job.collect.results import write_json
    from job.ml.latency import measure
    from job.search.record import TrialAttrs
    from job.search.retrain import retrain_data

    config = load_config(args.config, args.set)
    if (args.model is None) == (args.card is None):
        raise UsageError("train: give one of --model or --card")
    if args.out is not None:
        check_folder(Path(args.out), "--out")
    source = args.model or f"--card: {args.card}: model_yaml"
    card = read_card(args.card) if args.card else {}
    if args.card:
        spec, augment, base = _from_card(card, args.card)
    else:
        spec, augment, base = load_model_spec(args.model), config.augment, config.train
    overrides = {"epochs": args.epochs, "device": args.device}
    recipe = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    card_key = f"--card: {args.card}: recipe" if args.card else "train"  # where it came from
    resolve_device(recipe.device, "--device" if args.device else f"{card_key}.device")
    data = load_data(config.data)
    if args.card:
        if card["data_fingerprint"] != data.fingerprint:
            print("warning: the data differs from the card's (fingerprint): expect a change")
        data = retrain_data(data)
        print(f"as verification trained it: on train + validation ({len(data.train)} images);")
        print("the epochs' `val acc` is the test split's (nothing is selected on it)")
    check_batch(recipe, data, f"{card_key}.batch_size")
    try:
        measured = check_fit(spec, data)
    except TrainError as exc:
        raise ModelError(f"{source}: {exc.message}") from None
    print(
        f"data {data.name}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test, {data.num_classes} classes, fingerprint {data.fingerprint[:12]}",
        flush=True,
    )
    # timed before training, as the search times it (job.ml.latency; train.latency)
    timed = measure(spec, data, recipe) if recipe.measure_latency else None
    latency: dict[str, float] = TrialAttrs.from_latency(timed).to_attrs()
    result = train(spec, augment, recipe, data, on_epoch=_print_epoch, measured=measured, test=True)
    print(_summary(result, latency))
    if args.card and result.test_accuracy is not None:
        print(_card_check(card, result.test_accuracy))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        yaml_text = model_spec_yaml(spec)
        write_atomic(out / "model.yaml", lambda tmp: tmp.write_text(yaml_text, encoding="utf-8"))
        metrics = asdict(result) | latency
        metrics |= {"data_fingerprint": data.fingerprint, "version": __version__}
        write_json(out / "metrics.json", metrics)  # strict JSON: an unmeasured latency is null
        print(f"wrote {out / 'model.yaml'} and {out / 'metrics.json'}")
    return EXIT_OK


def cmd_augment_preview(args: argparse.Namespace) -> int:
    """Every op of the policy list at three magnitudes, on real photos and data images."""
    from job.ml.preview import write_preview

    config = load_config(args.config, args.set)
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out: {out} is a folder; give the PNG file to write")
    check_folder(out.parent, "--out")
    path = write_preview(config, out, size=args.size)
    print(f"wrote {path}")
    return EXIT_OK
