"""The whole config: `Config` (its sections, checked together), how a file becomes one
(`load_config`, with `--set key=value` overrides), how a validation error becomes one line
naming the key, and the fingerprint of what changes a trial's result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from job.config.base import (
    RESULTS,
    Affects,
    ConfigError,
    Section,
    _require,
)
from job.config.sections import (
    AugmentConfig,
    ConstraintsConfig,
    DataConfig,
    ExportConfig,
    Objective,
    SelectConfig,
    StudyConfig,
    TrainConfig,
)
from job.config.space import SpaceConfig
from job.files import key_name, parse_yaml, read_yaml, short
from job.urls import url_secrets


class Config(Section):
    # RESULTS: what a trial's result depends on, besides the data's content and the code
    # (the fingerprint, job.search.versions); study, select and export only steer the
    # search or read its results.
    study: StudyConfig = StudyConfig()
    data: Annotated[DataConfig, RESULTS] = DataConfig()
    augment: Annotated[AugmentConfig, RESULTS] = AugmentConfig()
    space: Annotated[SpaceConfig, RESULTS] = SpaceConfig()
    train: Annotated[TrainConfig, RESULTS] = TrainConfig()
    objectives: Annotated[tuple[Objective, ...], RESULTS] = Field(
        ("accuracy", "params"), min_length=1
    )
    constraints: Annotated[ConstraintsConfig, RESULTS] = ConstraintsConfig()
    select: SelectConfig = SelectConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        _require(
            len(set(self.objectives)) == len(self.objectives),
            f"objectives: listed twice in {short(list(self.objectives))}",
        )
        wants_latency = "latency" in self.objectives or self.constraints.max_latency_ms
        _require(
            self.train.measure_latency or not wants_latency,
            "train.measure_latency: must be true for the latency objective or "
            "constraints.max_latency_ms, got false",
        )
        epochs, study = self.train.epochs, self.study
        _require(
            study.budget_epochs is None or study.budget_epochs >= epochs,
            f"study.budget_epochs: must be >= train.epochs ({epochs}), or no trial can "
            f"train; got {study.budget_epochs}",
        )
        _require(
            not study.pruning.enabled or study.pruning.min_epochs < epochs,
            f"study.pruning.min_epochs: must be < train.epochs ({epochs}) for a trial to be "
            f"judged before its end; got {study.pruning.min_epochs}",
        )
        warmup = self.train.warmup_epochs
        _require(  # measured (docs/BENCHMARKS.md): at the warm-up's end, accuracy ranks nothing
            not study.pruning.enabled or study.pruning.min_epochs > warmup,
            f"study.pruning.min_epochs: must be > train.warmup_epochs ({warmup:g}): a rung "
            f"inside the warm-up judges networks before they learn; got "
            f"{study.pruning.min_epochs}",
        )
        searched, policy = self.space.augment, self.augment
        if searched is not None and policy.enabled:  # a trial's policy must stay valid
            _require(
                searched.n_select[1] <= len(policy.ops),
                f"space.augment.n_select: at most len(augment.ops) = {len(policy.ops)}, "
                f"got {short(list(searched.n_select))}",
            )
            _require(
                searched.level[1] <= policy.n_level,
                f"space.augment.level: at most augment.n_level = {policy.n_level}, "
                f"got {short(list(searched.level))}",
            )
        return self


def _path(loc: tuple[int | str, ...]) -> str:
    """('train', 'epochs') → 'train.epochs'; ('space', 'blocks', 2) → 'space.blocks[2]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-after", "tagged-union")):
            out += f".{key_name(part)}" if out else key_name(part)
    return out


_BOUNDS = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}"}
_BOUNDS |= {"less_than_equal": "<= {le}", "less_than": "< {lt}"}


def _describe(err: Any) -> str:
    """One line for one pydantic error: `key: what, got value`."""
    key, kind, ctx = _path(tuple(err["loc"])), err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind in _BOUNDS:
        return f"{key}: must be {_BOUNDS[kind].format(**ctx)}, got {short(err['input'])}"
    if kind == "value_error":  # our validators say "subkey: message"
        msg = str(ctx.get("error", err["msg"]))
        if ":" in msg.split(" ")[0]:
            return f"{key}.{msg}" if key else msg
        return f"{key or 'config'}: {msg}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f", got {short(got)}"
    return f"{key or 'config'}: {err['msg'][:1].lower()}{err['msg'][1:]}{shown}"


def _root_causes(errors: list[Any]) -> list[Any]:
    """Drop an error on a container that only echoes one inside it (a tuple of blocks
    "too short" because its one block failed)."""
    locs = [tuple(e["loc"]) for e in errors]
    return [
        e
        for e, loc in zip(errors, locs, strict=True)
        if not any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs)
    ] or errors


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate a parsed YAML document; errors become one `ConfigError` line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """A validation error as one line naming the first key at fault (under `prefix`,
    as in ``recipe.epochs: must be >= 1, got 0``), never quoting a whole value."""
    errors = _root_causes(exc.errors())
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    line = _describe(errors[0])
    if prefix:
        line = f"{prefix}{line}" if line.startswith("[") else f"{prefix}.{line}"
        line = line.replace(f"{prefix}.config: ", f"{prefix}: ", 1)
    return line + more


def _mark(info: FieldInfo) -> Affects | None:
    return next((m for m in info.metadata if isinstance(m, Affects)), None)


def _results(model: BaseModel, counted: bool) -> dict[str, Any]:
    """`model` as JSON, keeping the fields whose mark (or, unmarked, its section's)
    says they change a trial's result."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        mark = _mark(info)
        if not (mark.results if mark is not None else counted):
            continue
        value = getattr(model, name)
        if isinstance(value, Section):
            out[name] = _results(value, True)
        else:
            out[name] = model.model_dump(mode="json", include={name})[name]
    return out


def result_fields(config: Config) -> dict[str, Any]:
    """The part of `config` that changes a trial's result (the marked fields), as JSON;
    `train.latency` (marked NO_RESULTS) too where a result depends on it: where latency
    is an objective or a constraint. Elsewhere it changes only a figure shown beside the
    results, and earlier versions' fingerprints, from before it existed, stay valid."""
    fields = _results(config, False)
    if "latency" in config.objectives or config.constraints.max_latency_ms is not None:
        fields["train"]["latency"] = config.train.latency.model_dump(mode="json")
    return fields


def config_fingerprint(config: Config) -> str:
    """sha256 (hex, 16 digits) of the fields that change a trial's result, as canonical
    JSON: two configs with the same fingerprint give comparable trials."""
    text = json.dumps(result_fields(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _override(doc: dict[str, Any], assignment: str) -> None:
    """One `--set key.path=value` into the parsed file: the value read as YAML (bounded,
    as the file is: `3` an int, `[a, b]` a list, `null` None)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {short(assignment)}: expected KEY=VALUE, e.g. train.epochs=3")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {short(key)}: a key path is dot-separated names")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"--set {short(key)}: not a YAML value: {short(problem)}") from None
    node = doc
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {short(key)}: {where} is not a section")
        node = child
    if isinstance(value, str) and url_secrets(value):  # a storage URL with its password
        raise ConfigError(
            f"--set {short(key)}: holds a password, and a command line is readable by every "
            "user of the machine (ps); set OPTUNA_STORAGE or POSTGRES_PASSWORD instead"
        )
    node[parts[-1]] = value


def apply_overrides(doc: Any, assignments: Sequence[str], source: str = "config") -> Any:
    """The parsed file with each `--set KEY=VALUE` applied in order (later wins)."""
    if not assignments:
        return doc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(doc).__name__}")
    for assignment in assignments:
        _override(doc, assignment)
    return doc


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a config file, with `--set` overrides applied; every failure
    names the file or the key."""
    doc = apply_overrides(read_yaml(path, ConfigError), overrides, str(path))
    return parse_config(doc, str(path))


def dump_config(config: Config) -> str:
    """The config as YAML (every default spelled out), for records and reports."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
