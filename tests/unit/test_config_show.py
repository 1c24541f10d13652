"""`config show` and `--set`: the effective config a person can see, overrides validated
as the file is, and the result marks on the fields (job/config/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from job.cli.main import build_parser, main
from job.cli.verbs import VERBS
from job.config import (
    Config,
    ConfigError,
    DataConfig,
    TrainConfig,
    apply_overrides,
    config_fingerprint,
    load_config,
    result_fields,
)

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str, str]:
    code = main(["config", "show", "--config", QUICK, *argv])
    out, err = capsys.readouterr()
    body = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    return code, (yaml.safe_load(body) if code == 0 else {}), out, err


def test_show_fills_defaults_and_applies_set(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, out, _ = show(capsys, "--set", "train.epochs=3", "--set", "study.budget=7")
    assert code == 0
    assert doc["train"]["epochs"] == 3 and doc["study"]["budget"] == 7
    assert doc["train"]["momentum"] == 0.9  # a default the file does not spell out
    assert "# --set train.epochs" in out
    again = load_config(QUICK, ["train.epochs=3", "study.budget=7"])
    assert Config.model_validate(doc) == again  # what it prints is what the verbs run


def test_show_applies_the_environment_and_masks_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://sms:s3cret-pw@db:5432/sms")
    monkeypatch.setenv("SMS_STUDY", "other")
    monkeypatch.setenv("SMS_METRICS_PORT", "off")
    code, doc, out, err = show(capsys)
    assert code == 0 and "s3cret-pw" not in out + err
    assert doc["study"]["storage"] == "postgresql://sms:***@db:5432/sms"
    assert doc["study"]["name"] == "other" and doc["study"]["metrics_port"] is None
    assert "from the environment: SMS_STUDY" in out


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.epochz=3", "train.epochz: unknown key"),
        ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
        ("train.epochs=true", "train.epochs"),
        ("train.epochs.x=1", "train.epochs is not a section"),
        ("epochs", "expected KEY=VALUE"),
        ("train..epochs=1", "dot-separated"),
        ("train.epochs=[1", "not a YAML value"),
        ("study.storage=postgresql://u:pw@h/d", "holds a password"),
    ],
)
def test_a_bad_set_is_one_line_naming_the_key(
    capsys: pytest.CaptureFixture[str], assignment: str, message: str
) -> None:
    code, _, out, err = show(capsys, "--set", assignment)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
    assert "pw@" not in err


def test_every_verb_that_reads_a_config_takes_set() -> None:
    parser = build_parser()
    for name, (_, _, arguments) in VERBS.items():
        if any("--config" in flags for flags, _ in arguments):
            args = parser.parse_args([name, *_required(name), "--set", "a.b=1", "--set", "c=2"])
            assert args.set == ["a.b=1", "c=2"], name


def _required(verb: str) -> list[str]:
    extra = {"config": ["show"], "augment-preview": ["--out", "x.png"]}
    return [*extra.get(verb, []), "--config", QUICK]


def test_overrides_apply_in_order_and_make_sections() -> None:
    doc = apply_overrides({"train": {"epochs": 2}}, ["train.epochs=3", "train.epochs=4", "a.b=1"])
    assert doc == {"train": {"epochs": 4}, "a": {"b": 1}}
    assert apply_overrides(None, ["study.name=x"]) == {"study": {"name": "x"}}
    with pytest.raises(ConfigError, match="expected a mapping"):
        apply_overrides([1, 2], ["a=1"])


def test_result_marks_decide_the_fingerprint() -> None:
    base = Config()
    fields = result_fields(base)
    assert set(fields) == {"data", "augment", "space", "train", "objectives", "constraints"}
    assert "path" not in fields["data"] and "download" not in fields["data"]
    assert "eval_batch_size" not in fields["train"] and "epochs" in fields["train"]
    # fingerprints of earlier versions stay valid: the marks reproduce the old hand-kept list
    assert config_fingerprint(base) == "da01a380688e15c0"
    assert config_fingerprint(load_config(QUICK)) == "26ebef79000f01b3"
    assert config_fingerprint(load_config(ROOT / "configs" / "cifar10.yaml")) == "fc9b8e8bbba33a3b"
    moved = base.model_copy(update={"data": DataConfig(path=Path("/elsewhere"), download=True)})
    assert config_fingerprint(moved) == config_fingerprint(base)
    evals = base.model_copy(update={"train": TrainConfig(eval_batch_size=7)})
    assert config_fingerprint(evals) == config_fingerprint(base)
    longer = base.model_copy(update={"train": TrainConfig(epochs=11)})
    assert config_fingerprint(longer) != config_fingerprint(base)
    steered = base.model_copy(update={"study": base.study.model_copy(update={"budget": 99})})
    assert config_fingerprint(steered) == config_fingerprint(base)


def test_run_and_a_pod_pass_set_to_every_worker(tmp_path: Path) -> None:
    from job.run.local import RunOptions, worker_command

    options = RunOptions(
        Path(QUICK), 2, tmp_path, "journal:///x", "quickstart", overrides=("train.epochs=1",)
    )
    cmd, _ = worker_command(options, 1)
    assert cmd[cmd.index("--set") + 1] == "train.epochs=1"
    args = build_parser().parse_args(cmd[cmd.index("search") :])
    assert args.set == ["train.epochs=1"]
