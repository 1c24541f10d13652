"""job/config.py: typed sections, defaults, and one clear line per bad key."""

from __future__ import annotations

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
from tests.support.configs import BAD_CONFIGS

ROOT = Path(__file__).resolve().parents[2]


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


def test_nsga2_takes_its_generation_size_from_the_config() -> None:
    """Optuna's NSGA-II draws its first generation (50 by default) at random: a smaller
    study.nsga2_population lets a short search leave it (docs/BENCHMARKS.md)."""
    from job.search.worker import make_sampler

    config = parse_config({"study": {"sampler": "nsga2", "nsga2_population": 8}})
    assert make_sampler(config)._population_size == 8  # type: ignore[attr-defined]
    assert parse_config({}).study.nsga2_population == 50
    with pytest.raises(ConfigError, match=r"study\.nsga2_population"):
        parse_config({"study": {"nsga2_population": 1}})


def test_trial_and_retrain_seeds_stay_in_range() -> None:
    import optuna

    from job.collect.retrains import retrain_seeds
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
