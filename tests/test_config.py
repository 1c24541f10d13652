"""job/config.py: typed sections, defaults, and one clear line per bad key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from job.config import (
    SEED_SPAN,
    Config,
    ConfigError,
    derive_seed,
    dump_config,
    load_config,
    parse_config,
)
from job.files import MAX_YAML_ALIASES, MAX_YAML_DEPTH, YAMLRefused, json_problem, parse_yaml, short

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
    assert c.train.momentum > 0 and c.train.warmup_epochs == 0  # SGD, cosine: job/ml/train.py
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
    # within the model's caps (job.ml.blocks), and the study name's one rule
    ({"space": {"blocks": [{"modules": ["Conv"], "repeat": [1, 10**9]}]}}, "repeat: at most"),
    ({"space": {"blocks": [{"modules": ["Conv"], "channels": [8, 10**5, 8]}]}}, "channels:"),
    ({"space": {"blocks": [{"modules": ["Conv"], "kernel": [3, 10**5]}]}}, "kernel: at most"),
    ({"space": {"head_channels": [16, 10**5, 16]}}, "space.head_channels: at most 8192"),
    ({"space": {"blocks": [{"modules": ["Conv"], "v2_expansion": [1, 10**30]}]}}, "v2_expansion:"),
    (
        {"space": {"blocks": [{"modules": ["Conv"], "v3_expansion": [1.0, 1e300, 0.1]}]}},
        "space.blocks[0].v3_expansion: at most 8192 (a model's cap), got [1.0, 1e+300, 0.1]",
    ),
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
    # finite numbers within what their consumer takes (threading/time, numpy's seeds)
    ({"study": {"seed": -1}}, "study.seed: must be >= 0, got -1"),
    ({"data": {"seed": 2**32}}, "data.seed: must be <= 4294967295, got 4294967296"),
    ({"train": {"seed": 2**64}}, "train.seed: must be <= 4294967295"),
    ({"train": {"lr": float("inf")}}, "train.lr: input should be a finite number, got inf"),
    ({"train": {"warmup_epochs": 11.5}}, "train.warmup_epochs: must be <= epochs (10), got 11.5"),
    ({"study": {"grace_period_s": 10**9}}, "study.grace_period_s: must be <= 86400"),
    ({"study": {"stall_after_s": 10**12}}, "study.stall_after_s: must be <= 2592000"),
    ({"study": {"max_retry": 10**6}}, "study.max_retry: must be <= 100"),
    ({"export": {"latency_threads": 2**40}}, "export.latency_threads: must be <= 1024"),
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


# --- the YAML loader (job.config.SafeLoader): what a bad file can abuse is refused ---------


def _bomb(levels: int) -> str:
    """The "billion laughs": each list repeats the one before nine times (9**levels)."""
    rows = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(rows) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    with pytest.raises(YAMLRefused, match=r"aliases expand to more than 100,000 values"):
        parse_yaml(_bomb(9))  # 9**9 = 387M strings, were it expanded
    assert len(parse_yaml(_bomb(4))["a3"]) == 9  # 9**4 = 6561: a size a config may have


def test_ordinary_aliases_and_merge_keys_still_load() -> None:
    text = "base: &b {epochs: 3, lr: 0.1}\ntrain:\n  <<: *b\n  lr: 0.05\nalso: *b\n"
    assert parse_yaml(text) == {
        "base": {"epochs": 3, "lr": 0.1},
        "train": {"epochs": 3, "lr": 0.05},  # a key of its own overrides a merged one
        "also": {"epochs": 3, "lr": 0.1},
    }


def test_aliases_past_the_count_or_into_themselves_are_refused() -> None:
    many = "x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_YAML_ALIASES + 1)) + "]\n"
    with pytest.raises(YAMLRefused, match=rf"more than {MAX_YAML_ALIASES} aliases"):
        parse_yaml(many)
    assert len(parse_yaml(many.replace("*x, ", "", 1))["y"]) == MAX_YAML_ALIASES
    with pytest.raises(YAMLRefused, match="an alias refers to a value that contains it"):
        parse_yaml("a: &a [1, [*a]]\n")


def test_nesting_is_bounded_also_through_aliases() -> None:
    deep = MAX_YAML_DEPTH - 1  # the document's mapping is a level too
    assert parse_yaml("a: " + "[" * deep + "]" * deep) is not None
    with pytest.raises(YAMLRefused, match=rf"nested deeper than {MAX_YAML_DEPTH} levels"):
        parse_yaml("a: " + "[" * (deep + 1) + "]" * (deep + 1))
    with pytest.raises(YAMLRefused, match="nested deeper"):  # never a RecursionError
        parse_yaml("a: " + "[" * 100_000)
    half = "[" * 40 + "]" * 40  # 40 + 40 levels only once expanded
    with pytest.raises(YAMLRefused, match="aliases nest values deeper than 64 levels"):
        parse_yaml(f"a: &a {half}\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n")


def test_a_duplicate_key_names_the_key_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("study: {name: x}\ntrain:\n  epochs: 2\n  lr: 0.1\ntrain: {epochs: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: line 5: duplicate key 'train'"
    path.write_text("train:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 3: duplicate key 'epochs'"):
        load_config(path)


def test_an_integer_past_pythons_digit_limit_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    for digits in ("9" * 5000, "0x" + "f" * 5000):
        path.write_text(f"study:\n  seed: {digits}\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value) == f"{path}: line 2: an integer of more than 4300 digits"
    path.write_text("study:\n  seed: 1" + "2" * 4299 + "\n")  # read, then out of range
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        "study.seed: must be <= 4294967295, got <an integer of about 4300 digits>"
    )


def test_an_error_quotes_a_value_never_whole() -> None:
    assert len(short("x" * 10**6)) < 70
    assert len(short(list(range(10**5)))) < 70
    assert short(-(10**5000)) == "-<an integer of about 5001 digits>"
    assert short([1, "a", 2.5]) == "[1, 'a', 2.5]"  # small values as repr() gives them
    with pytest.raises(ConfigError) as info:
        parse_config({"augment": {"ops": ["y" * 10**6]}})
    assert len(str(info.value)) < 300  # the known ops listed, the unknown one cut
    with pytest.raises(ConfigError) as info:
        parse_config({"train": {"z" * 10**6: 1}})
    assert len(str(info.value)) < 200 and str(info.value).endswith(": unknown key")


def _float_leaves(value: object, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _float_leaves(v, f"{path}.{k}".strip("."))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _float_leaves(v, f"{path}[{i}]")]
    return [path] if isinstance(value, float) else []


def _with(doc: dict, path: str, value: object) -> dict:  # type: ignore[type-arg]
    """`doc` with the leaf at `path` (a.b[2].c) replaced."""
    import re

    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    node = doc
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return doc


OPTIONAL_FLOATS = [
    {"constraints": {"max_latency_ms": 5.0}},
    {"select": {"policies": [{"budget": {"latency_ms": 5.0}}]}},
    {"space": {"train": {"lr": [0.01, 0.1], "weight_decay": [1e-5, 1e-3]}}},
    {"space": {"train": {"label_smoothing": [0.0, 0.1]}}},
]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_float_in_the_config_is_finite(value: float) -> None:
    """Each float the config holds (every default, and the optional ones set), in turn
    made infinite or NaN: refused, naming that key."""
    docs = [Config().model_dump(mode="json")]
    docs += [parse_config(extra).model_dump(mode="json") for extra in OPTIONAL_FLOATS]
    checked = set()
    for doc in docs:
        for path in _float_leaves(doc):
            if path in checked:
                continue
            checked.add(path)
            with pytest.raises(ConfigError) as info:
                parse_config(_with(parse_config(doc).model_dump(mode="json"), path, value))
            assert str(info.value).startswith(f"{path}: input should be a finite number"), path
    assert {"train.lr", "study.metrics_linger_s", "export.max_logit_diff"} <= checked
    assert {"constraints.max_latency_ms", "select.policies[0].budget.latency_ms"} <= checked
    assert len(checked) > 40  # the seven blocks' v3_expansion ranges among them


# --- seeds: 0..2**32-1 as configured, and as derived at run time ---------------------------


def test_a_derived_seed_folds_into_range() -> None:
    assert derive_seed(7, 1000 * 3) == 3007  # unchanged while in range
    assert derive_seed(SEED_SPAN - 1, 1) == 0
    assert derive_seed(SEED_SPAN - 1, 1000 * 9_999_999, 1_000_003 * 9) < SEED_SPAN


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "gp"])
def test_every_sampler_takes_the_largest_seed_and_worker_index(sampler: str) -> None:
    """study.seed 2**32-1 on worker 9,999,999 (the largest index job.settings takes) of
    version 9: the sampler's seed is folded, so the worker starts."""
    from job.search.worker import make_sampler
    from job.settings import MAX_WORKER_INDEX

    config = parse_config({"study": {"seed": SEED_SPAN - 1, "sampler": sampler}})
    assert make_sampler(config, MAX_WORKER_INDEX, version=9) is not None


def test_trial_and_retrain_seeds_stay_in_range() -> None:
    import optuna

    from job.search.retrain import retrain_seeds
    from job.search.space import sample_recipe

    config = parse_config({"train": {"seed": SEED_SPAN - 1}, "select": {"retrain": {"seeds": 3}}})
    assert retrain_seeds(config) == [SEED_SPAN - 1, 0, 1]
    study = optuna.create_study()
    seeds = [sample_recipe(study.ask(), config).seed for _ in range(3)]
    assert seeds == [SEED_SPAN - 1, 0, 1]  # trial n trains with seed + n, folded


# --- cards (train --card): parsed JSON checked, naming the key ------------------------------


def test_json_problem_names_the_key() -> None:
    assert json_problem({"recipe": {"lr": 0.1}, "seeds": [{"seed": 1}]}) is None
    assert json_problem({"recipe": {"lr": float("inf")}}) == (
        "recipe.lr: must be a finite number, got inf"
    )
    assert json_problem({"verified": {"seeds": [1.0, float("nan")]}}) == (
        "verified.seeds[1]: must be a finite number, got nan"
    )
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    assert json_problem({"recipe": deep}) == (
        "recipe[0][0][0][0][0][0][0][0][0][0][0][…: nested deeper than 64 levels"
    )
