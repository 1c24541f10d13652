"""The experiment config, below every stage: one YAML file holds everything a search needs.

It loads into typed, frozen pydantic models. Unknown keys, wrong types (`epochs: true` is
not a number) and out-of-range values are errors naming the key's full path
(``train.epochs: must be >= 1, got 0``), so a typo costs seconds, not a cluster run; the
CLI turns a `ConfigError` into exit 2. `--set key=value` on the command line overrides a
key of the file, validated the same way; `python -m job config show` prints the result.

Each stage's inputs are declared once: the augmentation policy *is* the `augment` section
(`AugmentConfig`), the training recipe *is* the `train` section (`TrainConfig`). The
search layer derives a trial's values with `model_copy(update=…)` from values checked
against the `space` section, so nothing can turn invalid between load and trial.

- job/config/base.py      strict types, `Section`, `ConfigError`, seeds, the result marks
- job/config/sections.py  study, data, augment, train, constraints, select, export
- job/config/space.py     space: blocks, head, augment and recipe ranges
- job/config/load.py      `Config`, loading, `--set`, error lines, the fingerprint

This package imports no torch: the op and activation names it checks come from the
torch-free `job.ml.vocab`.
"""

from job.config.base import (
    NO_RESULTS,
    RESULTS,
    SEED_SPAN,
    Affects,
    ConfigError,
    derive_seed,
    study_name_problem,
)
from job.config.load import (
    Config,
    apply_overrides,
    config_fingerprint,
    describe_errors,
    dump_config,
    load_config,
    parse_config,
    result_fields,
)
from job.config.sections import (
    AugmentConfig,
    ConstraintsConfig,
    DataConfig,
    ExportConfig,
    LatencyConfig,
    Objective,
    Policy,
    PruningConfig,
    SelectConfig,
    StudyConfig,
    TrainConfig,
)
from job.config.space import BlockSpace, IntRange, SpaceConfig

__all__ = [
    "NO_RESULTS",
    "RESULTS",
    "SEED_SPAN",
    "Affects",
    "AugmentConfig",
    "BlockSpace",
    "Config",
    "ConfigError",
    "ConstraintsConfig",
    "DataConfig",
    "ExportConfig",
    "IntRange",
    "LatencyConfig",
    "Objective",
    "Policy",
    "PruningConfig",
    "SelectConfig",
    "SpaceConfig",
    "StudyConfig",
    "TrainConfig",
    "apply_overrides",
    "config_fingerprint",
    "derive_seed",
    "describe_errors",
    "dump_config",
    "load_config",
    "parse_config",
    "result_fields",
    "study_name_problem",
]
