"""Configs the tiers share: small real searches, and the bad configs every layer refuses."""

from __future__ import annotations

from pathlib import Path

import yaml

from job.config import Config, load_config
from tests.support.proc import ROOT

# A tiny search: digits at 8x8, two narrow blocks, one epoch per trial (a second or two).
TINY = """\
study: {name: tiny, budget: 4, sampler: random, seed: 0}
data: {name: digits, image_size: 8, subset: 300, val_ratio: 0.2}
augment: {n_select: 1, level: 3, flip_p: 0.0, cutout_p: 0.0}
space:
  blocks:
    - {modules: [Conv, DWConv], repeat: [1, 1], channels: [8, 16, 8], kernel: [3]}
    - {modules: [InvertedResidualv2, Pass], repeat: [1, 1], ir_channels: [8, 16, 8]}
  head_channels: [32, 64, 32]
  augment: {n_select: [0, 1], level: [0, 5], random_magnitude: [false]}
train: {epochs: 1, batch_size: 32, lr: 0.05, device: cpu, measure_latency: false}
objectives: [accuracy, params]
select: {verify: false}   # verification has its own tests (tests/unit/test_verify.py)
"""


def tiny(**changes: object) -> dict[str, object]:
    """TINY as a mapping, with `changes` by "section" or "section.key"."""
    doc = yaml.safe_load(TINY)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        doc[section] = {**doc[section], name: value} if name else value
    return dict(doc)


# A tiny search on a real image folder (tests.support.data.image_folder: 2 classes x 12
# PNGs of 8x8), as a format string of budget, path and extra data keys.
IMAGEFOLDER = """\
study: {{name: same, budget: {budget}, sampler: random, seed: 0}}
data: {{name: imagefolder, path: {path}, image_size: 8, val_ratio: 0.2{extra}}}
augment: {{enabled: false}}
space:
  blocks:
    - {{modules: [Conv], repeat: [1, 1], channels: [8, 8, 8], kernel: [3]}}
  head_channels: [16, 16, 16]
  augment: null
train: {{epochs: 1, batch_size: 4, device: cpu, measure_latency: false}}
objectives: [accuracy, params]
select: {{verify: false}}
"""


def imagefolder_config(tmp_path: Path, images: Path, budget: int = 1, extra: str = "") -> Config:
    """IMAGEFOLDER on `images`, written under tmp_path and loaded."""
    path = tmp_path / f"c{budget}{len(extra)}.yaml"
    path.write_text(IMAGEFOLDER.format(budget=budget, path=images, extra=extra))
    return load_config(path)


# A small, valid search: each case breaks one thing of it (or of its command line).
QUICK = """\
study: {name: bad, budget: 2, seed: 0}
data: {name: digits, image_size: 16, subset: 200, val_ratio: 0.2}
augment: {n_select: 1, level: 3, flip_p: 0.0}
space:
  blocks:
    - {modules: [Conv], repeat: [1, 1], channels: [8, 16, 8], kernel: [3]}
  head_channels: [16, 32, 16]
  augment: null
train: {epochs: 1, batch_size: 32, device: cpu, measure_latency: false}
"""


# Bad configs and the start of the one line each must give (also run through the CLI by
# tests/unit/test_bad_inputs.py).
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
    (
        {"select": {"policies": [{"knee": True, "name": "trial-5"}]}},
        "policies[0].name: 'trial-5' is how a pick's own folder is named",
    ),
    ({"study": {"deadline_s": 60}}, "study.deadline_s: must be >= 600"),
    ({"select": {"deadline_s": "1d"}}, "select.deadline_s"),
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


RESNET8 = str(ROOT / "configs" / "models" / "resnet8.yaml")


VERIFY = TINY.replace("select: {verify: false}", "") + (
    "select:\n"
    "  policies: [best, knee, {smallest_within: {accuracy_drop: 0.05}},\n"
    f"             {{reference: {RESNET8}}}]\n"
    "  retrain: {epochs: 1, seeds: 2}\n"
    "  verify_top_k: 2\n"
    f"  baselines: [{RESNET8}]\n"
)


VERIFIED = "{policies: [best, knee], retrain: {epochs: 1, seeds: 1}, verify_top_k: 1}"


RESEARCH = (
    TINY.replace("name: tiny, budget: 4, sampler: random", "name: digits, budget: 4, sampler: tpe")
    .replace(
        "data: {name: digits, image_size: 8, subset: 300, val_ratio: 0.2}",
        "data: {name: imagefolder, path: PATH, image_size: 8, val_ratio: 0.2, test_ratio: 0.2}",
    )
    .replace(
        "select: {verify: false}   # verification has its own tests (tests/unit/test_verify.py)",
        f"select: {VERIFIED}",
    )
)
