"""job/config.py: typed sections, defaults, and one clear line per bad key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from job.config import Config, ConfigError, dump_config, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "blocks"), [("quickstart.yaml", 4), ("cifar10.yaml", 7)])
def test_shipped_configs_load(name: str, blocks: int) -> None:
    config = load_config(ROOT / "configs" / name)
    assert config.objectives == ("accuracy", "params")
    assert len(config.space.blocks) == blocks


def test_cifar10_is_the_seed_scenario() -> None:
    c = load_config(ROOT / "configs" / "cifar10.yaml")
    assert (c.data.name, c.data.subset, c.data.image_size) == ("cifar10", 10000, 32)
    assert (c.train.batch_size, c.train.epochs, c.train.lr) == (128, 200, 0.1)
    assert c.train.momentum > 0 and c.train.warmup_epochs == 0  # SGD, cosine: job/train.py
    assert (c.augment.n_select, c.augment.level, c.augment.n_level) == (2, 15, 31)
    assert c.space.augment is None  # RandAugment fixed, as in the seed


def test_defaults_are_the_seed_space() -> None:
    c = Config()
    first, second = c.space.blocks[0], c.space.blocks[1]
    assert first.modules == ("Conv", "DWConv") and first.channels == (16, 64, 16)
    assert first.repeat == (1, 3) and first.kernel == (3,)
    assert "Pass" in second.modules and second.kernel == (1, 3, 5)
    assert c.space.blocks[-1].channels == (128, 1024, 128)
    assert c.space.max_stride2 == 5 and c.space.force_stride_by == 2


def test_frozen() -> None:
    c = Config()
    with pytest.raises(ValidationError):
        c.train.epochs = 3  # type: ignore[misc]


def test_round_trip_through_yaml() -> None:
    c = load_config(ROOT / "configs" / "quickstart.yaml")
    assert parse_config(yaml.safe_load(dump_config(c))) == c


# Bad configs and the start of the one line each must give (also run through the CLI by
# tests/test_bad_inputs.py).
BAD_CONFIGS: list[tuple[object, str]] = [
    ({"train": {"epochs": 0}}, "train.epochs: must be >= 1, got 0"),
    ({"train": {"epoch": 3}}, "train.epoch: unknown key"),
    ({"trian": {}}, "trian: unknown key"),
    ({"train": {"lr": "fast"}}, "train.lr: "),
    ({"data": {"val_ratio": 1.5}}, "data.val_ratio: must be < 1.0, got 1.5"),
    ({"data": {"name": "mnist"}}, "data.name: "),
    ({"data": {"name": "cifar10"}}, "data.path: required"),
    ({"augment": {"ops": ["Rotate", "Spin"]}}, "augment.ops: unknown op 'Spin'"),
    ({"augment": {"level": 40}}, "augment.level: must be <= n_level"),
    (
        {"space": {"blocks": [{"modules": ["Conv"], "channels": [64, 16, 8]}]}},
        "space.blocks[0].channels",
    ),
    ({"space": {"blocks": [{"modules": ["Transformer"]}]}}, "space.blocks[0].modules[0]"),
    ({"objectives": ["accuracy", "accuracy"]}, "objectives: listed twice"),
    ({"objectives": ["speed"]}, "objectives[0]: "),
    ({"study": {"budget": -1}}, "study.budget: must be >= 1, got -1"),
    # each of these used to load and then fail every trial, or pass silently
    ({"augment": {"ops": ["Rotate", "Rotate"]}}, "augment.ops: Rotate listed twice"),
    ({"augment": {"ops": [], "n_select": 0}}, "augment.ops: must name at least one op"),
    ({"augment": {"n_select": 15}}, "augment.n_select: must be <= len(ops) = 14"),
    ({"space": {"head_channels": [256, 64, 64]}}, "space.head_channels: need 0 < low"),
    ({"space": {"augment": {"n_select": [3, 1]}}}, "space.augment.n_select: need 0 <="),
    ({"space": {"augment": {"n_select": [0, 20]}}}, "space.augment.n_select: at most"),
    ({"space": {"augment": {"level": [-5, -1]}}}, "space.augment.level: need 0 <="),
    ({"space": {"augment": {"level": [0, 40]}}}, "space.augment.level: at most"),
    ({"space": {"train": {"lr": [-1, 0.1]}}}, "space.train.lr: need 0 < low"),
    ({"space": {"train": {"label_smoothing": [2.0]}}}, "space.train.label_smoothing: 2.0"),
    ({"space": {"blocks": [{"modules": ["Conv"], "kernel": []}]}}, "blocks[0].kernel: needs"),
    ({"space": {"blocks": [{"modules": ["Conv"], "kernel": [-3]}]}}, "blocks[0].kernel: -3"),
    ({"space": {"blocks": [{"modules": ["Conv"], "activation": ["Gelu"]}]}}, "'Gelu' is not"),
    ({"space": {"blocks": [{"modules": ["Conv"], "v2_expansion": [0, 0]}]}}, "v2_expansion"),
    ({"space": {"blocks": [{"modules": ["Conv"], "stride": [3]}]}}, "blocks[0].stride: 3"),
    ({"train": {"batch_size": 1}}, "train.batch_size: must be >= 2, got 1"),
    ({"train": {"epochs": True}}, "train.epochs: input should be a valid integer, got True"),
    ({"train": {"epochs": 2.5}}, "train.epochs: input should be a valid integer"),
    ({"augment": {"enabled": "yes"}}, "augment.enabled: "),
    ({"study": {"heartbeat_interval_s": 60}}, "study.grace_period_s: must be >"),
    # within the model's caps (job.modules), and the study name's one rule
    ({"space": {"blocks": [{"modules": ["Conv"], "repeat": [1, 10**9]}]}}, "repeat: at most"),
    ({"space": {"blocks": [{"modules": ["Conv"], "channels": [8, 10**5, 8]}]}}, "channels:"),
    ({"space": {"blocks": [{"modules": ["Conv"], "kernel": [3, 10**5]}]}}, "kernel: at most"),
    ({"space": {"head_channels": [16, 10**5, 16]}}, "space.head_channels: at most 8192"),
    (
        {"space": {"blocks": [{"modules": ["Conv"], "v3_expansion": [0.01, 0.04, 0.01]}]}},
        "v3_expansion: need low >= 0.1",
    ),
    ({"study": {"name": "a b/c"}}, "study.name: must be letters, digits"),
    ({"study": {"name": "x" * 121}}, "study.name: must be at most 120 characters"),
    # keys that did nothing are gone until they do something
    ({"train": {"optimizer": "sgd"}}, "train.optimizer: unknown key"),
    ({"train": {"schedule": "cosine"}}, "train.schedule: unknown key"),
    # select: each policy's settings, by name; a policy's folder name
    ({"select": {"policies": ["bset"]}}, "select.policies[0]: 'bset' is not a policy"),
    ({"select": {"policies": ["budget"]}}, "select.policies[0]: 'budget' needs settings"),
    ({"select": {"policies": [{"budget": {}}]}}, "select.policies[0].budget: give at least"),
    ({"select": {"policies": [{"budget": {"params": 0}}]}}, "budget.params: must be >= 1"),
    ({"select": {"policies": [{"budget": {"flops": 9}}]}}, "budget.flops: unknown key"),
    ({"select": {"policies": [{"best": True, "knee": True}]}}, "exactly one of"),
    ({"select": {"policies": ["knee", {"knee": True}]}}, "name 'knee' used twice"),
    (
        {"select": {"policies": [{"smallest_within": {"accuracy_drop": -0.1}}]}},
        "smallest_within.accuracy_drop: must be >= 0.0",
    ),
    ({"select": {"policies": [{"knee": True, "name": "../x"}]}}, "policies[0].name: must be"),
    ({"select": {"retrain": {"seeds": 0}}}, "select.retrain.seeds: must be >= 1, got 0"),
    ({"select": {"retrain": {"epochs": 0}}}, "select.retrain.epochs: must be >= 1, got 0"),
    ({"select": {"verify_top_k": -1}}, "select.verify_top_k: must be >= 0"),
    ({"select": {"baselines": ["a.yaml", "a.yaml"]}}, "select.baselines: a file is listed twice"),
    ({"export": {"onnx": "yes"}}, "export.onnx: input should be a valid boolean"),
    ({"export": {"opset": 9}}, "export.opset: must be >= 13, got 9"),
    ({"export": {"max_logit_diff": 0}}, "export.max_logit_diff: must be > 0.0"),
    ({"export": {"calibration_images": 0}}, "export.calibration_images: must be >= 1"),
    ({"export": {"int9": True}}, "export.int9: unknown key"),
    ([1, 2], "expected a mapping"),
]


@pytest.mark.parametrize(("doc", "expected"), BAD_CONFIGS)
def test_bad_config_names_the_key(doc: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ not valid YAML"):
        load_config(bad)


def test_no_error_is_counted_twice() -> None:
    """A failed block is reported once, not again as the list it sits in."""
    with pytest.raises(ConfigError) as info:
        parse_config({"space": {"blocks": [{"modules": ["Conv"], "kernel": []}]}})
    assert str(info.value) == "space.blocks[0].kernel: needs at least one choice"


@pytest.mark.slow
def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 0\n")
    model = ROOT / "configs" / "models" / "mobilenetv2.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "job", "train", "--config", str(bad), "--model", str(model)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.epochs: must be >= 1, got 0"
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_duplicate_ops_exit_2_at_load_before_any_training(tmp_path: Path) -> None:
    """`augment.ops: [Rotate, Rotate]` used to pass the config and crash `train` (exit 1)."""
    bad = tmp_path / "dup.yaml"
    bad.write_text("augment:\n  ops: [Rotate, Rotate]\n  n_select: 1\n")
    model = ROOT / "configs" / "models" / "mobilenetv2.yaml"
    for verb in (["train", "--model", str(model)], ["search", "--out", str(tmp_path)]):
        proc = subprocess.run(
            [sys.executable, "-m", "job", verb[0], "--config", str(bad), *verb[1:]],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (
            "error: augment.ops: Rotate listed twice (RandAugment picks distinct ops)"
        )
