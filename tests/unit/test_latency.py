"""job/ml/latency.py: the latency objective timed in the runtime `train.latency` names,
before training; and its one name per runtime and precision (job.search.record)."""

from __future__ import annotations

import pytest

from job.config import Config, ConfigError, LatencyConfig, parse_config
from job.config.load import config_fingerprint
from job.ml.data import Dataset
from job.ml.latency import Latency, measure
from job.search.record import LATENCY_KEYS, TrialAttrs, latency_key, latency_text
from tests.support.configs import tiny
from tests.support.training import FAST, TINY


@pytest.mark.parametrize(
    ("runtime", "precision"),
    [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("pytorch", "fp32")],
)
def test_each_runtime_times_the_network_at_batch_one(
    digits16: Dataset, runtime: str, precision: str
) -> None:
    cfg = LatencyConfig(runtime=runtime, precision=precision, runs=10)
    timed = measure(TINY, digits16, FAST.model_copy(update={"latency": cfg}))
    assert (timed.runtime, timed.precision) == (runtime, precision)
    assert 0.0 < timed.ms < 1000.0
    # PyTorch also gives its per-image figure at batch 256; onnxruntime only batch 1
    assert (timed.ms_b256 is not None) == (runtime == "pytorch")
    attrs = TrialAttrs.from_latency(timed).to_attrs()
    assert attrs[latency_key(runtime, precision)] == timed.ms
    assert set(attrs) - {"latency_ms_torch_b256"} == {LATENCY_KEYS[(runtime, precision)]}


def test_each_figure_has_one_name_that_says_where_it_was_timed() -> None:
    assert latency_key("onnxruntime", "fp32") == "latency_ms_ort_fp32"
    assert latency_key("onnxruntime", "int8") == "latency_ms_ort_int8"
    assert latency_key("pytorch", "fp32") == "latency_ms_torch"
    assert latency_text("latency_ms_ort_int8") == "onnxruntime CPU int8, batch 1"
    assert "PyTorch" in latency_text("latency_ms_torch")
    assert TrialAttrs.from_latency(None).to_attrs() == {}
    assert TrialAttrs.from_latency(Latency("pytorch", "fp32", 0.2, 0.01)).to_attrs() == {
        "latency_ms_torch": 0.2,
        "latency_ms_torch_b256": 0.01,
    }


def test_the_default_is_onnxruntime_fp32_on_one_thread() -> None:
    assert Config().train.latency == LatencyConfig(
        runtime="onnxruntime", precision="fp32", threads=1, runs=50
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train.latency": {"runtime": "pytorch", "precision": "int8"}}, "train.latency.precision"),
        ({"train.latency": {"threads": 0}}, "train.latency.threads"),
        ({"train.latency": {"runs": 5}}, "train.latency.runs"),
        ({"objectives": ["accuracy", "latency"]}, "train.measure_latency"),
        ({"constraints": {"max_latency_ms": 1.0}}, "train.measure_latency"),
    ],
)
def test_latency_settings_are_checked_before_any_trial(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(tiny(**changes))


def test_the_runtime_is_a_result_only_where_latency_steers_the_search() -> None:
    """Where latency is an objective, trials timed in another runtime are incomparable
    (a new study version); elsewhere the fingerprint stays what it was."""
    other = {"runtime": "pytorch"}
    plain = tiny(**{"train.measure_latency": True})
    assert config_fingerprint(parse_config(plain)) == config_fingerprint(
        parse_config({**plain, "train": {**plain["train"], "latency": other}})  # type: ignore[dict-item]
    )
    steering = tiny(**{"train.measure_latency": True, "objectives": ["accuracy", "latency"]})
    assert config_fingerprint(parse_config(steering)) != config_fingerprint(
        parse_config({**steering, "train": {**steering["train"], "latency": other}})  # type: ignore[dict-item]
    )
