"""job.ml.vocab (the torch-free names the config validates against) and job.ml.errors agree
with the tables that do the work, and import nothing heavy."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import job.ml.augment_ops as augment_ops
import job.ml.blocks as blocks
import job.ml.data
import job.ml.model
import job.ml.onnx
import job.ml.train
from job.ml import errors, vocab

ROOT = Path(__file__).resolve().parents[2]


def test_op_tables_name_the_same_ops_in_the_same_order() -> None:
    assert list(augment_ops._FUNCTIONS) == list(vocab.OPS)  # a row in each, same order
    assert list(augment_ops.OPS) == list(vocab.OPS)  # the config's messages list them so
    for name, spec in augment_ops.OPS.items():
        assert (spec.low, spec.high, spec.signed) == tuple(vocab.OPS[name])
        assert spec.fn is augment_ops._FUNCTIONS[name]
    assert augment_ops.DEFAULT_OPS is vocab.DEFAULT_OPS
    assert augment_ops.GREY == vocab.GREY == 128
    assert set(vocab.DEFAULT_OPS) == set(vocab.OPS) - {"Invert", "Cutout"}


def test_activation_and_cap_tables_agree() -> None:
    assert set(blocks.ACTIVATIONS) == set(vocab.ACTIVATIONS)
    assert all(name == name.lower() for name in vocab.ACTIVATIONS)  # matched in any case
    assert (blocks.MAX_CHANNELS, blocks.MAX_REPEAT) == (vocab.MAX_CHANNELS, vocab.MAX_REPEAT)


def test_a_row_missing_in_one_table_is_refused() -> None:
    """What augment_ops and blocks run at import: a mismatch names what is missing where."""
    vocab.same_names("a", ["X", "Y"], "b", {"Y": 1, "X": 2})  # order does not matter
    with pytest.raises(RuntimeError, match=r"only in a: \['Z'\], only in b: \[\]"):
        vocab.same_names("a", [*vocab.OPS, "Z"], "b", augment_ops._FUNCTIONS)


@pytest.mark.parametrize("module", ["job/ml/vocab.py", "job/ml/errors.py", "job/errors.py"])
def test_torch_free_modules_import_only_the_standard_library(module: str) -> None:
    """job.ml.errors may build on job.errors (the exit-code kinds), itself stdlib only."""
    tree = ast.parse((ROOT / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None
            imported.add(node.module)
    allowed = {"job.errors"} if module == "job/ml/errors.py" else set()
    outside = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside <= allowed | {"__future__"}, outside


def test_error_classes_are_re_exported_where_they_are_raised() -> None:
    assert job.ml.data.DataError is errors.DataError
    assert job.ml.model.ModelError is errors.ModelError
    assert job.ml.onnx.ExportError is errors.ExportError
    for name in ("TrainError", "Preempted", "CheckpointError"):
        assert getattr(job.ml.train, name) is getattr(errors, name)
    assert issubclass(errors.DataError, ValueError) and issubclass(errors.ModelError, ValueError)
    assert str(errors.TrainError("nan_loss", "x")) == "nan_loss: x"
    assert str(errors.Preempted(None, 2, 3)) == "preempted at epoch 2, step 3"
