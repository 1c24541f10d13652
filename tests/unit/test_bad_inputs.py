"""Bad input, tried as a new user would: every case exits 2 (1 for an outage past its
deadline) with one line on stderr naming the key, flag, file or URL, no traceback, and
nothing created or deleted in its folder.

Each case runs `python -m job …` in-process (`job.cli.main.main`) in a fresh folder that is
also the working directory, so the whole table takes seconds: every case must fail
before any training. `{tmp}` in arguments, files and environment is that folder;
`{cfg}` is `{tmp}/c.yaml`, written from the case's `config` (a small digits search).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from job.cli.main import main
from tests.support.configs import QUICK
from tests.support.data import image_bytes, journal_with_study_data, planted_pickle

MODEL = "configs/models/mobilenetv3_small.yaml"
STATUS = ("status", "--config", "{cfg}")
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    """One bad input: `python -m job ARGV` with the files and environment given."""

    id: str
    argv: tuple[str, ...]
    says: str  # a substring of the one line on stderr: the culprit's name
    config: str | None = QUICK  # written to {cfg}; None: no config file
    files: dict[str, str | bytes] = field(default_factory=dict)  # name → content
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2
    lines: int = 1  # 2: a "waiting for database" line first, then the error


def _edit(**sections: str) -> str:
    """QUICK with whole top-level sections replaced (YAML flow text per section)."""
    lines = [line for line in QUICK.splitlines() if line.split(":")[0] not in sections]
    keep = "\n".join(lines)
    if "space" in sections:  # the space section spans several lines
        keep = QUICK.split("space:")[0] + QUICK.split("augment: null\n")[1]
        keep = "\n".join(line for line in keep.splitlines() if line.split(":")[0] not in sections)
    return keep + "\n" + "\n".join(f"{k}: {v}" for k, v in sections.items()) + "\n"


def _png() -> bytes:
    """A tiny real PNG (8x8 grey), for image folders."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
NO_GPU = not torch.cuda.is_available()
TRAIN_M = ("train", "--config", "{cfg}", "--model", "{tmp}/m.yaml")


def _model(*rows: str, head: str = "input_channel: 3") -> dict[str, str | bytes]:
    """m.yaml: the rows, then a pool and a 10-class head (digits' classes)."""
    tail = "[1, GlobalAvgPool, []], [1, FixedConv, [10, 1, 1]]"
    return {"m.yaml": f"{head}\nbackbone: [{', '.join([*rows, tail])}]\n"}


def _space(**block: str) -> str:
    """QUICK with its one block's keys replaced (YAML flow values)."""
    keys = {"modules": "[Conv]", "repeat": "[1, 1]", "channels": "[8, 16, 8]", "kernel": "[3]"}
    keys |= block
    text = ", ".join(f"{k}: {v}" for k, v in keys.items())
    return _edit(space=f"{{blocks: [{{{text}}}], head_channels: [16, 32, 16], augment: null}}")


CASES: list[Case] = [
    # --- config: keys, types, ranges (validated at load) ---------------------------
    Case("unknown-key", ("train", "--config", "{cfg}", "--model", MODEL), "trian: unknown key",
         config=QUICK + "trian: {}\n"),
    Case("epochs-zero", ("search", "--config", "{cfg}"), "train.epochs: must be >= 1, got 0",
         config=_edit(train="{epochs: 0}")),
    Case("epochs-bool", ("search", "--config", "{cfg}"), "train.epochs",
         config=_edit(train="{epochs: true}")),
    Case("duplicate-ops", ("search", "--config", "{cfg}"), "augment.ops: Rotate listed twice",
         config=_edit(augment="{ops: [Rotate, Rotate], n_select: 1}")),
    Case("no-ops", ("search", "--config", "{cfg}"), "augment.ops",
         config=_edit(augment="{ops: [], n_select: 0}")),
    Case("batch-size-one", ("search", "--config", "{cfg}"), "train.batch_size",
         config=_edit(train="{batch_size: 1}")),
    Case("binary-config", ("search", "--config", "{cfg}"), "c.yaml", config="\udcff"),
    Case("missing-config", ("search", "--config", "{tmp}/nope.yaml"), "nope.yaml: cannot read",
         config=None),
    # --- the command line --------------------------------------------------------
    Case("train-epochs-zero", ("train", "--config", "{cfg}", "--model", MODEL, "--epochs", "0"),
         "--epochs"),
    # (helpers: add the cases of your part below, in your own section)
    # --- validation before the first trial (CLI, config, data, model) ------------------
    # space: every range, checked at load
    Case("head-channels-inverted", ("search", "--config", "{cfg}"), "space.head_channels",
         config=_edit(space="{head_channels: [256, 64, 64]}")),
    Case("space-n-select-inverted", ("search", "--config", "{cfg}"), "space.augment.n_select",
         config=_edit(space="{augment: {n_select: [3, 1]}}")),
    Case("space-level-negative", ("search", "--config", "{cfg}"), "space.augment.level",
         config=_edit(space="{augment: {level: [-5, -1]}}")),
    Case("space-lr-negative", ("search", "--config", "{cfg}"), "space.train.lr",
         config=_edit(space="{train: {lr: [-1, 0.1]}}")),
    Case("space-label-smoothing", ("search", "--config", "{cfg}"), "space.train.label_smoothing",
         config=_edit(space="{train: {label_smoothing: [2.0]}}")),
    Case("kernel-empty", ("search", "--config", "{cfg}"), "space.blocks[0].kernel",
         config=_space(kernel="[]")),
    Case("kernel-negative", ("search", "--config", "{cfg}"), "space.blocks[0].kernel",
         config=_space(kernel="[-3]")),
    Case("activation-unknown", ("search", "--config", "{cfg}"), "space.blocks[0].activation",
         config=_space(activation="[Relu7]")),
    Case("v2-expansion-zero", ("search", "--config", "{cfg}"), "space.blocks[0].v2_expansion",
         config=_space(v2_expansion="[0, 0]")),
    Case("v3-expansion-rounds-to-0", ("search", "--config", "{cfg}"), "blocks[0].v3_expansion",
         config=_space(v3_expansion="[0.01, 0.04, 0.01]")),
    Case("space-repeat-huge", ("search", "--config", "{cfg}"), "space.blocks[0].repeat",
         config=_space(repeat="[1, 1000000000]")),
    Case("space-channels-huge", ("search", "--config", "{cfg}"), "space.blocks[0].channels",
         config=_space(channels="[8, 100000, 8]")),
    Case("study-name-bad", ("search", "--config", "{cfg}"), "study.name",
         config=_edit(study="{name: 'a b/c'}")),
    # the device, at start-up (a config that names a GPU may still be collected without one)
    *([
        Case("device-cuda-search", ("search", "--config", "{cfg}"), "train.device",
             config=_edit(train="{device: cuda}")),
        Case("device-cuda-run", ("run", "--config", "{cfg}"), "train.device",
             config=_edit(train="{device: cuda}")),
        Case("device-cuda-train", (*TRAIN_M, "--device", "cuda"), "--device",
             files=_model("[1, Conv, [8, 3]]")),
    ] if NO_GPU else []),
    # the data: class count, batch size vs the train split
    Case("imagefolder-one-class", ("search", "--config", "{cfg}"), "imgs: one class ('cat')",
         config=_edit(data="{name: imagefolder, path: imgs, image_size: 16}"),
         files={f"imgs/cat/{i}.png": PNG for i in range(6)}),
    Case("batch-over-train-split", ("search", "--config", "{cfg}"),
         "train.batch_size: 512 is more than the 160 images",
         config=_edit(train="{batch_size: 512, device: cpu}")),
    Case("batch-over-train-split-run", ("run", "--config", "{cfg}"), "train.batch_size",
         config=_edit(train="{batch_size: 512, device: cpu}")),
    Case("batch-over-train-split-train", TRAIN_M, "train.batch_size",
         config=_edit(train="{batch_size: 512, device: cpu}"), files=_model("[1, Conv, [8, 3]]")),
    # output and checkpoint folders: checked before anything is trained or opened
    Case("train-out-a-file", (*TRAIN_M, "--out", "/etc/passwd"), "--out: /etc/passwd",
         files=_model("[1, Conv, [8, 3]]")),
    Case("train-out-under-a-file", (*TRAIN_M, "--out", "{cfg}/run"), "--out",
         files=_model("[1, Conv, [8, 3]]")),
    Case("checkpoint-dir-search", ("search", "--config", "{cfg}"), "study.checkpoint_dir",
         config=QUICK.replace("seed: 0}", "seed: 0, checkpoint_dir: c.yaml/ck}", 1)),
    Case("checkpoint-dir-run", ("run", "--config", "{cfg}"), "study.checkpoint_dir",
         config=QUICK.replace("seed: 0}", "seed: 0, checkpoint_dir: c.yaml/ck}", 1)),
    Case("preview-out-a-folder", ("augment-preview", "--config", "{cfg}", "--out", "{tmp}"),
         "--out"),
    # the model YAML (train --model): exit 2 naming the file
    Case("model-input-channel-1", TRAIN_M, "m.yaml: input_channel is 1",
         files=_model("[1, Conv, [8, 3]]", head="input_channel: 1")),
    Case("model-binary", TRAIN_M, "m.yaml", files={"m.yaml": b"\xff\xfe\x00binary"}),
    Case("model-nul-bytes", TRAIN_M, "m.yaml", files={"m.yaml": "backbone: \x00\x01"}),
    Case("model-100k-channels", TRAIN_M, "m.yaml: backbone[0] (Conv)",
         files=_model("[1, Conv, [100000, 3]]")),
    Case("model-repeat-1e9", TRAIN_M, "m.yaml: backbone[0] (Conv): repeat",
         files=_model("[1000000000, Conv, [8, 3]]")),
    Case("model-width-multiple", TRAIN_M, "m.yaml: backbone[0] (Conv)",
         files=_model("[1, Conv, [1024, 3]]", head="width_multiple: 50")),
    Case("model-depth-multiple", TRAIN_M, "m.yaml: backbone[0] (Conv)",
         files=_model("[5, Conv, [8, 3]]", head="depth_multiple: 100")),
    Case("model-expansion-huge", TRAIN_M, "m.yaml: backbone[1] (InvertedResidualv2)",
         files=_model("[1, Conv, [64, 3]]", "[1, InvertedResidualv2, [16, 1000, 1]]")),
    Case("model-over-params-cap", TRAIN_M, "m.yaml: 604,",
         files=_model("[1, Conv, [8192, 3]]", "[1, Conv, [8192, 3]]")),
    Case("model-misfit", TRAIN_M, "m.yaml: backbone[1] (MaxPool)",
         files=_model("[1, Conv, [8, 3]]", "[6, MaxPool, [2]]")),
    # command-line numbers and names: argparse's own error, on one line
    Case("run-metrics-port-70000", ("run", "--config", "{cfg}", "--metrics-port", "70000"),
         "--metrics-port"),
    Case("run-metrics-port-negative", ("run", "--config", "{cfg}", "--metrics-port", "-1"),
         "--metrics-port"),
    Case("run-metrics-ports-past-65535",
         ("run", "--config", "{cfg}", "--metrics-port", "65535", "--workers", "2"),
         "--metrics-port: 2 workers need ports up to 65536"),
    Case("run-workers-zero", ("run", "--config", "{cfg}", "--workers", "0"), "--workers"),
    Case("preview-size-zero",
         ("augment-preview", "--config", "{cfg}", "--out", "{tmp}/p.png", "--size", "0"),
         "--size"),
    Case("collect-timeout-negative",
         ("collect", "--config", "{cfg}", "--wait", "--timeout", "-1"), "--timeout"),
    Case("collect-timeout-nan", ("collect", "--config", "{cfg}", "--wait", "--timeout", "nan"),
         "--timeout"),
    Case("search-study-name", ("search", "--config", "{cfg}", "--study", "a b/c"), "--study"),
    Case("status-study-name", ("status", "--config", "{cfg}", "--study", "../x"), "--study"),
    Case("dashboard-port-70000", ("dashboard", "--out", "{tmp}", "--port", "70000"), "--port"),
    Case("dashboard-artifacts-file", ("dashboard", "--out", "{tmp}", "--artifacts", "{cfg}"),
         "c.yaml is not a folder"),
    Case("train-epochs-text", (*TRAIN_M, "--epochs", "ten"), "--epochs"),
    Case("train-device-gpu", (*TRAIN_M, "--device", "gpu"), "--device"),
    Case("train-no-model", ("train", "--config", "{cfg}"), "--model"),
    Case("unknown-verb", ("frobnicate",), "invalid choice: 'frobnicate'"),
    # --- storage, destructive operations --------------------------------------------
    # (a wrong password, --fresh against a live holder:
    # tests/integration/test_storage_processes.py)
    Case("storage-scheme-foo", (*STATUS, "--storage", "foo://bar"),
         "storage foo://bar: 'foo' is not supported"),
    Case("storage-mysql", (*STATUS, "--storage", "mysql://u:pw@localhost/db"),
         "storage mysql://u:***@localhost/db: 'mysql' is not supported"),
    Case("storage-driver-missing", (*STATUS, "--storage", "postgresql+asyncpg://u:pw@h/db"),
         "no driver 'postgresql+asyncpg' installed"),
    Case("storage-unparsable", (*STATUS, "--storage", "postgresql://u:pw@[::1"),
         "the storage is not a valid database URL (postgresql://…)"),
    Case("storage-sqlite-memory", (*STATUS, "--storage", "sqlite://"),
         "an in-memory SQLite database is no shared storage"),
    Case("storage-journal-empty", (*STATUS, "--storage", "journal://"), "no journal file named"),
    Case("storage-port-99999",
         (*STATUS, "--storage", "postgresql+psycopg2://u:pw@127.0.0.1:99999/db"),
         "storage postgresql+psycopg2://u:***@127.0.0.1:99999/db: port 99999 is not in 1-65535"),
    Case("storage-port-99999-env", STATUS, "POSTGRES_PORT: ", env={
        "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "99999", "POSTGRES_USER": "u",
        "POSTGRES_PASSWORD": "pw", "POSTGRES_DB": "db"}),
    # an outage past the start-up wait (SMS_DB_WAIT_S=0: no wait): exit 1, one line
    Case("storage-refused", (*STATUS, "--storage", "postgresql+psycopg2://u:pw@127.0.0.1:1/db"),
         "database postgresql+psycopg2://u:***@127.0.0.1:1/db not reachable: ",
         env={"SMS_DB_WAIT_S": "0"}, code=1),
    Case("storage-refused-search",
         ("search", "--config", "{cfg}", "--storage", "postgresql+psycopg2://u:pw@[::1]:1/db"),
         "not reachable: ", env={"SMS_DB_WAIT_S": "0"}, code=1),
    Case("storage-postgresql-psycopg3", (*STATUS, "--storage", "postgresql://u:pw@h/db"),
         "no driver 'postgresql' installed (write postgresql+psycopg2://)"),
    Case("storage-unknown-host",
         (*STATUS, "--storage", "postgresql+psycopg2://u:pw@no-such-host.invalid/db"),
         "no-such-host.invalid", env={"SMS_DB_WAIT_S": "0"}, code=1),
    Case("storage-refused-after-wait",
         (*STATUS, "--storage", "postgresql+psycopg2://u:pw@127.0.0.1:1/db"),
         "not reachable after 0.3 s", env={"SMS_DB_WAIT_S": "0.3"}, code=1, lines=2),
    # the runtime's other variables: checked before the first trial, not at the push
    *[Case(f"pushgateway-{verb}-{i}", (verb, "--config", "{cfg}"), "SMS_PUSHGATEWAY: ",
           env={"SMS_PUSHGATEWAY": raw})
      for verb in ("search", "run", "collect", "research")
      for i, raw in enumerate(("pushgateway:9091", "http://u:pw@gw:99999"))],
    Case("log-format-yaml", STATUS, "SMS_LOG_FORMAT: expected one of text, json, got 'yaml'",
         env={"SMS_LOG_FORMAT": "yaml"}),
    Case("log-format-bad-flag-too", ("status", "--bogus"), "SMS_LOG_FORMAT: ",
         env={"SMS_LOG_FORMAT": "xml"}),
    Case("journal-under-proc", ("search", "--config", "{cfg}", "--out", "/proc/x"), "/proc/x"),
    Case("journal-run-under-proc", ("run", "--config", "{cfg}", "--out", "/proc/x"), "/proc/x"),
    Case("journal-is-a-folder", ("search", "--config", "{cfg}", "--storage", "journal://{tmp}"),
         "Is a directory"),
    Case("journal-under-a-file",
         ("search", "--config", "{cfg}", "--storage", "journal://{cfg}/study.journal"),
         "c.yaml"),
    # status and collect never create a study: a mistyped folder or name says so
    Case("status-no-study", (*STATUS, "--out", "{tmp}/typo"),
         "study 'bad' not found in journal://"),
    Case("status-no-study-default", STATUS, "study 'bad' not found in journal://"),
    Case("status-other-study", (*STATUS, "--study", "other", "--out", "{tmp}/r"),
         "study 'other' not found", files={"r/study.journal": ""}),
    Case("status-no-sqlite-file", (*STATUS, "--storage", "sqlite:///{tmp}/none.db"),
         "study 'bad' not found in sqlite:///"),
    Case("collect-no-study", ("collect", "--config", "{cfg}", "--out", "{tmp}/typo"),
         "study 'bad' not found"),
    # --wait: collect starts beside the workers, so it waits for the study (making none)
    Case("collect-no-study-wait", ("collect", "--config", "{cfg}", "--wait", "--timeout", "0"),
         "study 'bad' did not appear within 0.0s", code=1),
    # select: a baseline or reference file is checked before any trial or study
    Case("baseline-missing", ("search", "--config", "{cfg}"), "nope.yaml: no such model YAML",
         config=QUICK + "select: {baselines: [nope.yaml]}\n"),
    Case("reference-missing-run", ("run", "--config", "{cfg}"), "ref.yaml: no such model YAML",
         config=QUICK + "select: {policies: [{reference: ref.yaml}]}\n"),
    Case("baseline-missing-collect", ("collect", "--config", "{cfg}"), "nope.yaml: no such",
         config=QUICK + "select: {baselines: [nope.yaml]}\n"),
    Case("baseline-bad-module", ("search", "--config", "{cfg}"), "m.yaml",
         config=QUICK + "select: {baselines: [m.yaml]}\n",
         files=_model("[1, Transformer, [8]]")),
    Case("baseline-4-channels", ("search", "--config", "{cfg}"), "m.yaml: input_channel is 4",
         config=QUICK + "select: {baselines: [m.yaml]}\n",
         files=_model("[1, Conv, [8, 3, 1]]", head="input_channel: 4")),
    # train --card: one of --model and --card; a card that is one
    Case("train-model-and-card", (*TRAIN_M, "--card", "{tmp}/card.json"),
         "give one of --model or --card"),
    Case("train-neither", ("train", "--config", "{cfg}"), "give one of --model or --card"),
    Case("card-missing", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "card.json: cannot read (No such file"),
    Case("card-not-json", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a card (not JSON)", files={"card.json": "model: [1"}),
    Case("card-no-model", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a card (no model_yaml", files={"card.json": '{"recipe": {}}'}),
    Case("card-bad-recipe", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a usable card", files={"card.json": '{"model_yaml": "input_channel: 3\\n'
         'backbone: [[1, Conv, [8]]]", "recipe": {"epochs": 0}, "augment": null, '
         '"data_fingerprint": "x"}'}),
    # --- issue 23: config files, YAML, numbers (finite ranges, seeds) -----------------
    # YAML (configs and model YAMLs): refused while composing, one line with file and line
    Case("yaml-alias-bomb", ("search", "--config", "{cfg}"),
         "c.yaml: line 10: aliases expand to more than 100,000 values",
         config=_edit(objectives="[&a [lol, lol, lol, lol, lol, lol, lol, lol, lol], " + ", ".join(
             f"&{n} [{', '.join(['*' + p] * 9)}]"
             for p, n in zip("abcdefgh", "bcdefghi", strict=True)
         ) + "]")),
    Case("yaml-alias-bomb-model", TRAIN_M, "m.yaml: line 2: aliases expand to more than",
         files={"m.yaml": "input_channel: 3\nbackbone: [&a [1, Conv, [8, 3]], " + ", ".join(
             f"&{n} [{', '.join(['*' + p] * 9)}]"
             for p, n in zip("abcdefgh", "bcdefghi", strict=True)
         ) + "]\n"}),
    Case("yaml-alias-many", ("search", "--config", "{cfg}"), "c.yaml: line 10: more than 256",
         config=QUICK + "select: {baselines: [&a x, " + ", ".join(["*a"] * 300) + "]}\n"),
    Case("yaml-alias-recursive", ("search", "--config", "{cfg}"),
         "c.yaml: line 10: an alias refers to a value that contains it",
         config=QUICK + "objectives: &a [accuracy, *a]\n"),
    Case("yaml-duplicate-key", ("search", "--config", "{cfg}"),
         "c.yaml: line 10: duplicate key 'train'", config=QUICK + "train: {epochs: 2}\n"),
    Case("yaml-duplicate-key-nested", ("search", "--config", "{cfg}"),
         "c.yaml: line 9: duplicate key 'epochs'",
         config=QUICK.replace("{epochs: 1,", "{epochs: 1, epochs: 3,")),
    Case("yaml-duplicate-key-model", TRAIN_M, "m.yaml: line 3: duplicate key 'backbone'",
         files={"m.yaml": "input_channel: 3\nbackbone: []\nbackbone: [[1, Conv, [8, 3]]]\n"}),
    Case("yaml-deep-nesting", ("search", "--config", "{cfg}"),
         "c.yaml: line 10: nested deeper than 64 levels",
         config=QUICK + "objectives: " + "[" * 5000 + "]" * 5000 + "\n"),
    Case("yaml-deep-nesting-model", TRAIN_M, "m.yaml: line 2: nested deeper than 64 levels",
         files={"m.yaml": "input_channel: 3\nbackbone: " + "[" * 5000 + "]" * 5000 + "\n"}),
    Case("yaml-int-5000-digits", ("search", "--config", "{cfg}"),
         "c.yaml: line 9: an integer of more than 4300 digits",
         config=QUICK.replace("{epochs: 1,", "{epochs: " + "9" * 5000 + ",")),
    Case("yaml-int-hex-huge", ("search", "--config", "{cfg}"),
         "c.yaml: line 9: an integer of more than 4300 digits",
         config=QUICK.replace("{epochs: 1,", "{epochs: 0x" + "f" * 5000 + ",")),
    Case("yaml-int-4000-digits", ("search", "--config", "{cfg}"),
         "train.seed: must be <= 4294967295, got <an integer of about 4000 digits>",
         config=QUICK.replace("{epochs: 1,", "{seed: 1" + "0" * 3999 + ", epochs: 1,")),
    # long values and keys are quoted in part, never whole
    Case("long-unknown-key", ("search", "--config", "{cfg}"), "train.'xxxxxxxx",
         config=QUICK.replace("{epochs: 1,", "{" + "x" * 1000 + ": 1, epochs: 1,")),
    Case("long-unknown-op", ("search", "--config", "{cfg}"), "augment.ops: unknown op 'yyyy",
         config=_edit(augment="{ops: [" + "y" * 100000 + "], n_select: 1}")),
    Case("long-list-value", ("search", "--config", "{cfg}"), "objectives: listed twice in [",
         config=_edit(objectives="[" + ", ".join(["accuracy"] * 20000) + "]")),
    # numbers: finite everywhere, within what their consumer accepts
    *[Case(f"not-finite-{key}-{value}", ("search", "--config", "{cfg}"),
           f"{key}: input should be a finite number, got {value.strip('.')}",
           config=QUICK.replace(old, new.replace("{v}", value)))
      for key, old, new in [
          ("train.lr", "{epochs: 1,", "{lr: {v}, epochs: 1,"),
          ("train.weight_decay", "{epochs: 1,", "{weight_decay: {v}, epochs: 1,"),
          ("train.warmup_epochs", "{epochs: 1,", "{warmup_epochs: {v}, epochs: 1,"),
          ("train.momentum", "{epochs: 1,", "{momentum: {v}, epochs: 1,"),
          ("study.db_outage_deadline_s", "seed: 0}", "seed: 0, db_outage_deadline_s: {v}}"),
          ("study.metrics_linger_s", "seed: 0}", "seed: 0, metrics_linger_s: {v}}"),
          ("data.val_ratio", "val_ratio: 0.2}", "val_ratio: {v}}"),
          ("augment.cutout_size", "flip_p: 0.0}", "flip_p: 0.0, cutout_size: {v}}"),
      ]
      for value in (".inf", ".nan")],
    *[Case(f"not-finite-{key.split('.')[0]}-{i}", ("search", "--config", "{cfg}"),
           f"{key}: input should be a finite number, got inf", config=QUICK + text)
      for i, (key, text) in enumerate([
          ("export.max_logit_diff", "export: {max_logit_diff: .inf}\n"),
          ("constraints.max_latency_ms", "constraints: {max_latency_ms: .inf}\n"),
          ("select.policies[0].budget.latency_ms",
           "select: {policies: [{budget: {latency_ms: .inf}}]}\n"),
      ])],
    Case("not-finite-space-lr", ("search", "--config", "{cfg}"),
         "space.train.lr[1]: input should be a finite number, got inf",
         config=QUICK.replace("augment: null", "augment: null\n  train: {lr: [0.001, .inf]}")),
    Case("huge-metrics-linger", ("search", "--config", "{cfg}"),
         "study.metrics_linger_s: must be <= 3600.0, got 1e+300",
         config=QUICK.replace("seed: 0}", "seed: 0, metrics_linger_s: 1.0e+300}")),
    Case("huge-db-outage-deadline", ("search", "--config", "{cfg}"),
         "study.db_outage_deadline_s: must be <= 86400.0",
         config=QUICK.replace("seed: 0}", "seed: 0, db_outage_deadline_s: 1.0e+300}")),
    Case("huge-heartbeat", ("search", "--config", "{cfg}"),
         "study.heartbeat_interval_s: must be <= 3600",
         config=QUICK.replace("seed: 0}", "seed: 0, heartbeat_interval_s: 1000000000000}")),
    Case("warmup-past-epochs", ("search", "--config", "{cfg}"),
         "train.warmup_epochs: must be <= epochs (1), got 5",
         config=QUICK.replace("{epochs: 1,", "{warmup_epochs: 5, epochs: 1,")),
    # seeds: 0..2**32-1 at load; a worker's index within 0..9999999 (the sampler's seed
    # folds study.seed + 1000 * index into range: job.config.derive_seed)
    Case("seed-study-negative", ("search", "--config", "{cfg}"), "study.seed: must be >= 0, got -3",
         config=QUICK.replace("seed: 0}", "seed: -3}")),
    Case("seed-study-2-70", ("run", "--config", "{cfg}"),
         "study.seed: must be <= 4294967295, got 1180591620717411303424",
         config=QUICK.replace("seed: 0}", f"seed: {2**70}}}")),
    Case("seed-train-2-70", ("search", "--config", "{cfg}"),
         "train.seed: must be <= 4294967295, got 1180591620717411303424",
         config=QUICK.replace("{epochs: 1,", f"{{seed: {2**70}, epochs: 1,")),
    Case("seed-train-negative", TRAIN_M, "train.seed: must be >= 0, got -1",
         config=QUICK.replace("{epochs: 1,", "{seed: -1, epochs: 1,"),
         files=_model("[1, Conv, [8, 3]]")),
    Case("seed-data-2-32", ("search", "--config", "{cfg}"), "data.seed: must be <= 4294967295",
         config=QUICK.replace("val_ratio: 0.2}", f"val_ratio: 0.2, seed: {2**32}}}")),
    Case("worker-index-huge", ("search", "--config", "{cfg}"),
         "JOB_COMPLETION_INDEX: expected an integer 0..9999999, got '99999999999'",
         env={"JOB_COMPLETION_INDEX": "99999999999"}),
    Case("worker-index-5000-digits", ("search", "--config", "{cfg}"),
         "JOB_COMPLETION_INDEX: expected an integer 0..9999999, got 5000 characters",
         env={"JOB_COMPLETION_INDEX": "9" * 5000}),
    Case("worker-index-local-huge", ("search", "--config", "{cfg}"),
         "SMS_WORKER_INDEX: expected an integer 0..9999999", env={"SMS_WORKER_INDEX": "10000000"}),
    # train --card: one line naming the card's key at fault (never a config key)
    Case("card-deep-json", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "card.json: not a card (nested too deeply)",
         files={"card.json": '{"model_yaml": ' + "[" * 100000 + "]" * 100000 + "}"}),
    Case("card-nested-past-64", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a usable card: recipe[0][0]", files={"card.json": '{"recipe": ' + "[" * 200
         + "]" * 200 + "}"}),
    Case("card-int-5000-digits", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "card.json: not a card (an integer of more than 4300 digits)",
         files={"card.json": '{"recipe": {"epochs": ' + "9" * 5000 + "}}"}),
    Case("card-infinity", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a usable card: recipe.lr: must be a finite number, got inf",
         files={"card.json": '{"model_yaml": "input_channel: 3\\nbackbone: [[1, Conv, [8]]]", '
                '"recipe": {"lr": Infinity}, "augment": null, "data_fingerprint": "x"}'}),
    Case("card-nan-verified", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a usable card: verified.mean: must be a finite number, got nan",
         files={"card.json": '{"model_yaml": "input_channel: 3\\nbackbone: [[1, Conv, [8]]]", '
                '"recipe": {}, "augment": null, "data_fingerprint": "x", '
                '"verified": {"mean": NaN, "std": 0.0}}'}),
    Case("card-recipe-epochs-zero", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "card.json: not a usable card: recipe.epochs: must be >= 1, got 0",
         files={"card.json": '{"model_yaml": "input_channel: 3\\nbackbone: [[1, Conv, [8]]]", '
                '"recipe": {"epochs": 0}, "augment": null, "data_fingerprint": "x"}'}),
    Case("card-recipe-seed-2-70", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a usable card: recipe.seed: must be <= 4294967295",
         files={"card.json": '{"model_yaml": "input_channel: 3\\nbackbone: [[1, Conv, [8]]]", '
                f'"recipe": {{"seed": {2**70}}}, "augment": null, "data_fingerprint": "x"}}'}),
    Case("card-augment-bad", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a usable card: augment.flip_p: must be <= 1.0, got 2.0",
         files={"card.json": '{"model_yaml": "input_channel: 3\\nbackbone: [[1, Conv, [8]]]", '
                '"recipe": {}, "augment": {"flip_p": 2.0}, "data_fingerprint": "x"}'}),
    Case("card-model-yaml-bad", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a usable card: model_yaml: line 1 not valid YAML",
         files={"card.json": '{"model_yaml": "backbone: [1", "recipe": {}, "augment": null, '
                '"data_fingerprint": "x"}'}),
    Case("card-model-yaml-duplicate", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "not a usable card: model_yaml: line 2: duplicate key 'input_channel'",
         files={"card.json": '{"model_yaml": "input_channel: 3\\ninput_channel: 1\\nbackbone: []", '
                '"recipe": {}, "augment": null, "data_fingerprint": "x"}'}),
    Case("card-batch-over-split", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
         "card.json: recipe.batch_size: 100000 is more than",
         files={"card.json": '{"model_yaml": "input_channel: 3\\nbackbone: [[1, Conv, [8, 3]], '
                '[1, GlobalAvgPool, []], [1, FixedConv, [10, 1, 1]]]", '
                '"recipe": {"batch_size": 100000, "device": "cpu"}, "augment": null, '
                '"data_fingerprint": "x"}'}),
    *([Case("card-device-cuda", ("train", "--config", "{cfg}", "--card", "{tmp}/card.json"),
            "card.json: recipe.device: 'cuda' asked for",
            files={"card.json": '{"model_yaml": "input_channel: 3\\nbackbone: [[1, Conv, [8]]]", '
                   '"recipe": {"device": "cuda"}, "augment": null, "data_fingerprint": "x"}'})]
      if NO_GPU else []),
    Case("db-wait-400-digits", STATUS, "SMS_DB_WAIT_S: must be at most 86400 s",
         env={"SMS_DB_WAIT_S": "9" * 400}),
    # --- issue 23: storage URLs, journals, run (outage, locks, signals) ---------------
    # a journal whose torn record was built upon (a record joined to it: line 2), as the
    # old append left it: refused by every verb, naming the file, the line and the repair
    *[Case(f"journal-damaged-{name}", (*argv, "--out", "{tmp}/r"),
           "r/study.journal: line 2 is not a journal record (a torn write built upon); "
           "repair it with: python -m job repair-journal ",
           files={"r/study.journal":
                  '{"op_code":0,"worker_id":"w-1","study_name":"bad","directions":[2,1]}\n'
                  '{"op_code":2,"worker_id":"w-1","study_id":0,"user_at'
                  '{"op_code":2,"worker_id":"w-2","study_id":0,"user_attr":{"b":2}}\n'
                  '{"op_code":2,"worker_id":"w-2","study_id":0,"user_attr":{"c":3}}\n'})
      for name, argv in (("status", STATUS), ("collect", ("collect", "--config", "{cfg}")),
                         ("research-dry-run", ("research", "--config", "{cfg}", "--dry-run")),
                         ("search", ("search", "--config", "{cfg}")),
                         ("run", ("run", "--config", "{cfg}")))],
    # a storage URL naming a file that is no journal or no database
    *[Case(f"journal-not-a-journal-{verb}", (verb, "--config", "{cfg}", "--storage", url),
           f"{name}: not an Optuna journal file", files={"p.png": PNG})
      for verb in ("status", "search", "run")
      for name, url in (("c.yaml", "journal://{cfg}"), ("p.png", "journal://{tmp}/p.png"))],
    *[Case(f"sqlite-not-a-database-{verb}", (verb, "--config", "{cfg}", "--storage", url),
           f"{name}: file is not a database", files={"p.png": PNG})
      for verb in ("status", "search", "run")
      for name, url in (("c.yaml", "sqlite:///{cfg}"), ("p.png", "sqlite:///{tmp}/p.png"))],
    # a password with a character a URL reserves, unencoded: refused at once, none of it shown
    *[Case(f"storage-password-{i}-{verb}",
           (verb, "--config", "{cfg}", "--storage", f"postgresql+psycopg2://u:{pw}@127.0.0.1:1/db"),
           "holds a character that a URL reserves (@ / ? #): percent-encode it")
      for verb in ("status", "search", "run", "collect")
      for i, pw in enumerate(("pw@cd", "pw/cd", "pw#cd", "pw?cd", "pw@cd/x"))],
    # libpq's connect_timeout in the URL: merged with our own wait, or refused in one line
    Case("storage-connect-timeout",
         (*STATUS, "--storage", "postgresql+psycopg2://u:pw@127.0.0.1:1/db?connect_timeout=2"),
         "not reachable after 0.3 s", env={"SMS_DB_WAIT_S": "0.3"}, code=1, lines=2),
    Case("storage-connect-timeout-run",
         ("run", "--config", "{cfg}", "--storage",
          "postgresql+psycopg2://u:pw@127.0.0.1:1/db?connect_timeout=0"),
         "not reachable after 0.3 s", env={"SMS_DB_WAIT_S": "0.3"}, code=1, lines=2),
    Case("storage-connect-timeout-bad",
         (*STATUS, "--storage", "postgresql+psycopg2://u:pw@127.0.0.1:1/db?connect_timeout=soon"),
         "connect_timeout must be whole seconds, got 'soon'", env={"SMS_DB_WAIT_S": "0.3"}),
    # --- issue 23: data, checkpoints, training inputs --------------------------------
    # a checkpoint folder no checkpoint can be written to, though its permission bits
    # (root's) say yes: found before the first trial, not at preemption
    *[Case(f"checkpoint-dir-unwritable-{verb}-{i}", (verb, "--config", "{cfg}"),
           f"study.checkpoint_dir: cannot write checkpoints in {path}",
           config=QUICK.replace("seed: 0}", f"seed: 0, checkpoint_dir: {path}}}", 1))
      for verb in ("search", "run") for i, path in enumerate(("/proc/sms-ck", "/proc/a/b"))],
    # image modes with no faithful 8-bit form: refused naming the file (16-bit is scaled)
    *[Case(f"image-mode-{i}", ("search", "--config", "{cfg}"), f"imgs/b/odd.tif: mode {says}",
           config=_edit(data="{name: imagefolder, path: imgs, image_size: 8}"),
           files={"imgs/a/0.png": PNG, "imgs/b/0.png": PNG, "imgs/b/odd.tif": content})
      for i, (content, says) in enumerate([
          (image_bytes(np.array([[0, 70000]], np.int32), "TIFF"), "I values 0..70000"),
          (image_bytes(np.array([[0.0, 9.5]], np.float32), "TIFF"), "F (32-bit float)")])],
    # a CIFAR-10 file whose pickle would run code (create ./marker): refused, nothing made
    Case("cifar-planted-pickle", ("search", "--config", "{cfg}"),
         "batches.meta: not a readable CIFAR-10 pickle (it names io.open",
         config=_edit(data="{name: cifar10, path: cif}"),
         files={"cif/cifar-10-batches-py/batches.meta": planted_pickle("marker")}),
    # the data changed under a study its first worker recorded: collect refuses (run and
    # search too: tests/unit/test_study_data.py, as they write to the journal before)
    Case("study-data-changed-collect", ("collect", "--config", "{cfg}"),
         "here, 000000000000 in study 'bad' (the data changed",
         files={"runs/bad/study.journal": journal_with_study_data("bad", "0" * 64)}),
    # --- issue 23: collect, publish, dashboard, exporter, research, preview -----------
    # dashboard and exporter: --host and --port checked by binding, before any storage
    Case("dashboard-host-unresolvable",
         ("dashboard", "--out", "{tmp}", "--host", "no-such-host.invalid"),
         "--host no-such-host.invalid: cannot resolve it", files={"study.journal": ""}),
    Case("dashboard-host-not-here", ("dashboard", "--out", "{tmp}", "--host", "192.0.2.1"),
         "--host 192.0.2.1: not an address of this machine", files={"study.journal": ""}),
    Case("dashboard-host-control-chars",
         ("dashboard", "--out", "{tmp}", "--host", "bad\nhost" + "x" * 400), "--host 'bad\\n",
         files={"study.journal": ""}),
    Case("exporter-host-unresolvable",
         ("exporter", "--config", "{cfg}", "--out", "{tmp}", "--host", "no-such-host.invalid"),
         "--host no-such-host.invalid: cannot resolve it"),
    Case("exporter-host-control-chars",
         ("exporter", "--config", "{cfg}", "--out", "{tmp}", "--host", "bad\nhost" + "x" * 400),
         "--host 'bad\\n"),
    Case("exporter-host-not-here",
         ("exporter", "--config", "{cfg}", "--out", "{tmp}", "--host", "192.0.2.1"),
         "--host 192.0.2.1: not an address of this machine"),
    # research decides its study itself: --study is refused with the reason
    Case("research-study", ("research", "--config", "{cfg}", "--study", "other"),
         "--study other: research picks its study itself"),
    # augment-preview makes a missing --out folder; one it cannot make is one line
    Case("preview-out-under-proc",
         ("augment-preview", "--config", "{cfg}", "--out", "/proc/x/y/p.png"), "--out"),
    Case("preview-out-under-a-file",
         ("augment-preview", "--config", "{cfg}", "--out", "{cfg}/x/p.png"), "--out"),
]  # fmt: skip


def _config_cases() -> list[Case]:
    """Every bad config of tests/unit/test_config.py, through `search` as a user runs it."""
    from tests.support.configs import BAD_CONFIGS

    cases = []
    for i, (doc, expected) in enumerate(BAD_CONFIGS):
        text = yaml.safe_dump(doc, sort_keys=False)
        cases.append(Case(f"config-{i}", ("search", "--config", "{cfg}"), expected, config=text))
    return cases


CASES += _config_cases()


# A case that has not failed within this many seconds hangs (an alias bomb, an idle
# client): a guard against hanging the suite, far above any case's real time; no timing.
HANG_S = 60
MAX_LINE = 300  # no error line longer than this (an error never reprs its whole input)


class HangError(Exception):
    """A case ran past HANG_S."""


@contextmanager
def _hang_guard(seconds: int) -> Iterator[None]:
    """Raise HangError in the main thread after `seconds` (SIGALRM), so a hang fails the case."""

    def _ring(signum: int, frame: object) -> None:
        raise HangError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _tree(root: Path) -> dict[str, str]:
    """Every path under root with its content's digest: a case must change none of them."""
    return {
        str(p.relative_to(root)): (
            hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() and not p.is_symlink()
            else "-"
        )
        for p in root.rglob("*")
    }


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{cfg}", str(tmp / "c.yaml")).replace("{tmp}", str(tmp))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh folder as the working directory; the repo's configs reachable by path."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    for name in ("OPTUNA_STORAGE", "POSTGRES_HOST", "SMS_METRICS_PORT", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_at_once_with_one_line(
    case: Case, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if case.config is not None:
        data = case.config.encode("utf-8", "surrogateescape")
        (in_tmp / "c.yaml").write_bytes(data)
    for name, content in case.files.items():
        path = in_tmp / _fill(name, in_tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_fill(content, in_tmp))
    for name, value in case.env.items():
        monkeypatch.setenv(name, _fill(value, in_tmp))
    before = _tree(in_tmp)
    try:
        with _hang_guard(HANG_S):
            code = main([_fill(arg, in_tmp) for arg in case.argv])
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, err[:2000]
    assert len(lines) == case.lines, err[:2000]
    assert case.says in lines[-1], err[:2000]
    assert all(len(line) <= MAX_LINE for line in lines), err[:2000]
    assert "pw@" not in err  # every URL's password masked
    assert "Traceback" not in err
    assert _tree(in_tmp) == before, "a bad input created, changed or deleted files"
    assert os.getcwd() == str(in_tmp)


@pytest.mark.parametrize(
    ("argv", "config", "env", "says"),
    [
        (("search",), "study: {{name: bad, budget: 2, metrics_port: {port}}}", {},
         "study.metrics_port: port {port} is not free"),
        (("search",), "", {"SMS_METRICS_PORT": "{port}"}, "SMS_METRICS_PORT: port {port}"),
        (("run", "--metrics-port", "{port}"), "", {}, "--metrics-port: port {port} is not free"),
    ],
    ids=["search-config", "search-env", "run"],
)  # fmt: skip
def test_a_metrics_port_in_use_fails_at_start_with_one_line(
    argv: tuple[str, ...],
    config: str,
    env: dict[str, str],
    says: str,
    in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:  # listening on every address, as a server would
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        study = config.format(port=port) or "study: {name: bad, budget: 2}"
        text = QUICK.replace("study: {name: bad, budget: 2, seed: 0}", study)
        (in_tmp / "c.yaml").write_text(text)
        for name, value in env.items():
            monkeypatch.setenv(name, value.format(port=port))
        before = _tree(in_tmp)
        code = main([a.format(port=port) for a in (argv[0], "--config", "c.yaml", *argv[1:])])
        err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and says.format(port=port) in err, err
    assert _tree(in_tmp) == before


def test_an_error_line_keeps_a_long_paths_repair_command_whole_and_still_caps_a_flood() -> None:
    from job.cli.main import MAX_ERROR_LINE, error_line
    from job.storage.journal import REPAIR

    path = "/var/lib/small-model-search/" + "a-rather-long-folder-name/" * 8 + "study.journal"
    said = error_line(
        f"error: journal {path}: line 65 is not a journal record (a torn write built "
        f"upon); repair it with: {REPAIR} {path}"
    )
    assert said.endswith(f"{REPAIR} {path}") and " … " not in said
    flood = error_line("error: bad value " + "x" * 100_000 + "\nsecond line")
    assert len(flood) == MAX_ERROR_LINE and " … " in flood and "\n" not in flood
