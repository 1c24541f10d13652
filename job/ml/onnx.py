"""Stage 9 of the data path, export: each selected model as files a deployer can run.

A deployer gets, per pick, ``model.onnx`` (fp32, dynamic batch: input ``input``
(batch, 3, S, S) float32, output ``logits`` (batch, classes)), optionally
``model.int8.onnx`` (onnxruntime static quantization, QDQ), and the card's ``input``
section (`input_spec`): how to turn an image into the tensor the file expects, without
our code. Every figure on the card is measured, none estimated:

* ``max_logit_diff`` / ``top1_agreement``: onnxruntime (CPU) against the PyTorch network
  (fp32, eval, CPU, no autocast) on every test image, normalised as training does; the
  file is ``verified`` when the largest absolute logit difference is within tolerance.
* ``test_accuracy``: onnxruntime's predictions on the whole test split, per file; int8's
  ``accuracy_drop`` is fp32 ONNX accuracy minus int8 ONNX accuracy on the same images.
* ``latency_ms``: onnxruntime CPU, batch 1, pinned intra-op threads, sequential
  execution; median and p90 of ``time.perf_counter`` around each run after a warm-up.
* ``bytes`` / ``size_ratio``: the files' sizes on disk.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import torch
from numpy.typing import NDArray
from onnxruntime import quantization as ortq
from torch import Tensor, nn

from job.config import DataConfig, ExportConfig
from job.files import OutputError, write_atomic, writing
from job.ml.data import FILL, Dataset, Split
from job.ml.errors import ExportError as ExportError  # torch-free, for callers
from job.ml.evaluate import Normalize, accuracy_and_f1
from job.ml.model import ModelSpec, build_model

INPUT, OUTPUT, BATCH_AXIS = "input", "logits", "batch"
ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
PROVIDER = "CPUExecutionProvider"
INT8_FORMAT = "QDQ, per-channel int8 weights in a 7-bit range, uint8 activations"
_CALIBRATION_SEED = 0  # the int8 ranges come from the same images on every run
_CALIBRATION_BATCH = 64
_ORT_ERRORS_ONLY = 3  # onnxruntime log severity: its warnings are advice, not problems
_CPU = torch.device("cpu")
_INT8 = {  # onnxruntime.quantization.quantize_static's settings, as INT8_FORMAT says
    "quant_format": ortq.QuantFormat.QDQ,
    "per_channel": True,
    "weight_type": ortq.QuantType.QInt8,
    "activation_type": ortq.QuantType.QUInt8,
    # 7-bit weights: x86 CPUs without VNNI (AVX2, most AVX-512) multiply u8 x s8 pairs
    # into int16 that saturates with full-range weights (onnxruntime's quantization docs);
    # measured on such a CPU, the quickstart's int8 lost 11.7 points of accuracy, 0.8
    # with this. The same file then runs alike on every CPU it is deployed to.
    "reduce_range": True,
}

Array = NDArray[np.float32]


def _one_line(exc: BaseException, first_sentence: bool = False) -> str:
    text = " ".join(str(exc).split())  # torch and onnxruntime errors run over many lines
    if first_sentence:  # torch's load errors go on with paragraphs of advice
        text = text.split(". ")[0]
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the card's input section --------------------------------------------------------------


def input_spec(data: Dataset, cfg: DataConfig) -> dict[str, Any]:
    """The card's ``input``: everything a caller needs to feed model.onnx without our code
    (job.ml.data's `prepare_images`, then job.ml.evaluate's `Normalize`, in words and numbers)."""
    size = cfg.image_size
    resize = (
        f"decode to RGB (grey replicated to 3 channels); pad the short side to a square "
        f"with grey {FILL}, image centred (an odd extra row or column goes to the bottom "
        f"or right); if not already {size}x{size}, resize to {size}x{size} with "
        f"antialiased bilinear interpolation (PyTorch F.interpolate, mode='bilinear', "
        f"antialias=True, align_corners=False) and round back to uint8"
    )
    return {
        "name": INPUT,
        "layout": "NCHW",
        "dtype": "float32",
        "channels": 3,
        "color": "RGB",
        "height": size,
        "width": size,
        "resize": resize,
        "scale": 1 / 255,  # pixel values 0..255 → [0, 1] first
        "mean": list(data.mean),
        "std": list(data.std),
        "formula": "(pixel / 255 - mean) / std, per channel",
        "output": f"{OUTPUT} (batch, classes); softmax for probabilities",
        "classes": list(data.classes),
    }


# --- fp32 export and its check -------------------------------------------------------------


def _cpu_eval(model: nn.Module) -> nn.Module:
    """A copy in fp32, eval mode, on the CPU, contiguous: the caller's model is untouched
    (it may live on a GPU in channels_last, or be in training mode)."""
    net = copy.deepcopy(model).float().to(_CPU).to(memory_format=torch.contiguous_format)
    return net.eval()


def export_onnx(model: nn.Module, image_size: int, path: Path, opset: int) -> None:
    """``model`` → fp32 ONNX at ``path`` (written atomically), batch axis dynamic; the
    written file passes onnx.checker. `ExportError` on failure."""
    net = _cpu_eval(model)
    # Batch 2, not 1: a batch-1 trace can bake the size into reshapes despite dynamic_axes.
    example = torch.zeros(2, 3, image_size, image_size)  # (2, 3, S, S)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # The tracer warns that shape tests (job.ml.model.to_logits: "is the map bigger
            # than 1x1?") become constants; only the batch axis is dynamic, and H, W are
            # fixed by the export, so constants are exactly right.
            warnings.filterwarnings(
                "ignore", "Converting a tensor to a Python", module="job.ml.model"
            )
            # The TorchScript exporter is chosen on purpose (dynamo's needs onnxscript);
            # its deprecation notices (one from the call, one from inside) say only that.
            warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(
                net,
                (example,),
                str(tmp),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: BATCH_AXIS}, OUTPUT: {0: BATCH_AXIS}},
                opset_version=opset,
                do_constant_folding=True,  # eval-mode BatchNorm folded into the conv weights
                dynamo=False,
            )
        onnx.checker.check_model(str(tmp), full_check=True)  # before it replaces anything

    try:
        with writing(path), torch.no_grad():
            write_atomic(path, write)
    except OutputError:  # disk full, read-only, ...: not the model's fault
        raise
    except Exception as exc:  # the exporter and checker raise many types
        raise ExportError(f"{path.name}: ONNX export failed ({_one_line(exc)})") from None


@contextmanager
def _ort_errors(path: Path) -> Iterator[None]:
    """onnxruntime's own error types (Fail, InvalidProtobuf, ...) → one-line `ExportError`."""
    try:
        yield
    except Exception as exc:
        raise ExportError(f"{path.name}: onnxruntime cannot run it ({_one_line(exc)})") from None


def ort_session(path: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session; threads 0: onnxruntime's default pool."""
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_ERRORS_ONLY
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=[PROVIDER])


def _batches(split: Split, norm: Normalize, batch: int) -> list[Tensor]:
    """The split normalised exactly as training does, in float32 batches (b, 3, S, S)."""
    return [norm(split.x[i : i + batch]) for i in range(0, len(split), batch)]


def _run(session: Any, x: Tensor) -> Array:
    """Logits (b, classes) from onnxruntime for x (b, 3, S, S) float32."""
    out: Array = session.run([OUTPUT], {INPUT: x.numpy()})[0]
    return out


def check_onnx(
    path: Path, model: nn.Module, data: Dataset, tolerance: float, batch: int = 256
) -> dict[str, Any]:
    """onnxruntime against PyTorch on the whole test split. A file onnxruntime cannot load
    or run gives ``verified`` False with the problem, never an exception."""
    test = data.test.to(_CPU)
    result = _unverified(data, None)
    if not len(test):
        return result | {"problem": "no test images to check against"}
    net = _cpu_eval(model)
    norm = Normalize(data, _CPU, channels_last=False)
    diff, agree, preds = 0.0, 0, []
    try:
        session = ort_session(path)
        for x in _batches(test, norm, batch):
            with torch.inference_mode(), torch.autocast("cpu", enabled=False):
                want = net(x).numpy()  # (b, classes)
            got = _run(session, x)  # (b, classes)
            if got.shape != want.shape:
                problem = f"ONNX gives logits {got.shape}, PyTorch {want.shape}"
                return result | {"problem": f"{path.name}: {problem}"}
            # NaN anywhere must fail the check: np.max propagates it, and NaN <= tol is False.
            diff = max(diff, float(np.max(np.abs(got.astype(np.float64) - want))))
            if math.isnan(diff):
                break
            agree += int((got.argmax(1) == want.argmax(1)).sum())
            preds.append(torch.from_numpy(got.argmax(1)))
    except Exception as exc:  # a file onnxruntime cannot load or run is a finding, not a crash
        return result | {"problem": f"{path.name}: onnxruntime cannot run it ({_one_line(exc)})"}
    finite = math.isfinite(diff)
    result |= {"max_logit_diff": diff, "verified": finite and diff <= tolerance}
    if not finite:
        return result | {"problem": f"{path.name}: non-finite logits"}
    accuracy, _ = accuracy_and_f1(torch.cat(preds), test.y, data.num_classes)
    result |= {"top1_agreement": agree / len(test), "test_accuracy": accuracy}
    if not result["verified"]:
        result["problem"] = f"{path.name}: max logit diff {diff:.3g} over {tolerance:.3g}"
    return result


# --- int8 ----------------------------------------------------------------------------------


class _Calibration(ortq.CalibrationDataReader):  # type: ignore[misc]
    """Feeds fixed batches of normalised training images to the int8 range calibrator."""

    def __init__(self, batches: list[Tensor]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, Array] | None:
        x = next(self.batches, None)  # (b, 3, S, S) float32
        return None if x is None else {INPUT: x.numpy()}


def calibration_batches(data: Dataset, images: int) -> list[Tensor]:
    """A seeded, fixed sample of ``images`` training images, normalised as training does."""
    train = data.train.to(_CPU)
    gen = torch.Generator().manual_seed(_CALIBRATION_SEED)
    index = torch.randperm(len(train), generator=gen)[:images].sort().values  # (n,)
    sample = Split(train.x[index], train.y[index])
    return _batches(sample, Normalize(data, _CPU, channels_last=False), _CALIBRATION_BATCH)


def quantize_int8(fp32: Path, out: Path, data: Dataset, images: int) -> None:
    """fp32 ONNX → int8 ONNX at ``out`` (atomically): onnxruntime's pre-processing, then
    static QDQ quantization, per-channel int8 weights, uint8 activations, ranges (MinMax)
    from ``images`` training images. `ExportError` on failure."""
    prepared = out.with_name(f".{out.name}.{os.getpid()}.pre.onnx")
    try:
        with writing(out):
            # Shape inference and graph fusion first (onnxruntime's advice for
            # quantization): BN folded into conv, so the int8 ranges are those of the ops
            # that really run.
            ortq.quant_pre_process(fp32, prepared)
            reader = _Calibration(calibration_batches(data, images))
            write_atomic(out, lambda tmp: ortq.quantize_static(prepared, tmp, reader, **_INT8))
    except OutputError:  # disk full, read-only, ...: not the model's fault
        raise
    except Exception as exc:  # onnx, onnxruntime and the calibrator raise many types
        raise ExportError(f"{out.name}: int8 quantization failed ({_one_line(exc)})") from None
    finally:
        prepared.unlink(missing_ok=True)


# --- accuracy and latency of a file --------------------------------------------------------


def ort_accuracy(path: Path, data: Dataset, batch: int = 256) -> float:
    """Top-1 accuracy of the ONNX file on the whole test split, under onnxruntime."""
    norm, test = Normalize(data, _CPU, channels_last=False), data.test.to(_CPU)
    with _ort_errors(path):
        session = ort_session(path)
        preds = [torch.from_numpy(_run(session, x).argmax(1)) for x in _batches(test, norm, batch)]
    return accuracy_and_f1(torch.cat(preds), test.y, data.num_classes)[0]


def ort_latency(
    path: Path, image_size: int, threads: int, runs: int, warmup: int = 20
) -> dict[str, Any]:
    """Batch-1 latency under onnxruntime on the CPU, ``threads`` intra-op threads."""
    with _ort_errors(path):
        session = ort_session(path, threads)
        # Seeded noise, not zeros: the timing is the same for any input, zeros might not be.
        x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size))
        feed = {INPUT: x.astype(np.float32)}  # (1, 3, S, S)
        for _ in range(warmup):  # thread pool, allocator arena, first-run kernel choices
            session.run([OUTPUT], feed)
        times: list[float] = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run([OUTPUT], feed)
            times.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "runs": runs,
        "threads": threads,
        "batch": 1,
        "provider": PROVIDER,
    }


# --- one pick ------------------------------------------------------------------------------


def load_weights(spec: ModelSpec, weights: Path, name: str | None = None) -> nn.Module:
    """The spec's network with ``weights`` loaded strictly (``weights_only``: a file can
    hold tensors, never code); `ExportError` (one line, naming the file as ``name``, by
    default its file name) when the file is unreadable or its tensors do not fit."""
    name = name or weights.name
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = build_model(spec)
    except Exception as exc:  # a damaged file raises almost any type
        raise ExportError(f"{name}: cannot load ({_one_line(exc, True)})") from None
    if not isinstance(state, dict):
        raise ExportError(f"{name}: not a state dict ({type(state).__name__})")
    # Named here rather than by torch's error, which lists every key over many lines.
    want = {k: v.shape for k, v in model.state_dict().items()}
    got = {k: getattr(v, "shape", None) for k, v in state.items()}
    wrong = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if wrong:
        what = f"{len(wrong)} tensors missing, extra or of another shape, e.g. {wrong[0]!r}"
        raise ExportError(f"{name}: does not fit the spec's network ({what})")
    try:
        model.load_state_dict(state)  # strict: anything the checks above missed still fails
    except RuntimeError as exc:
        raise ExportError(f"{name}: does not fit ({_one_line(exc)})") from None
    return model.eval()


def _unverified(data: Dataset, problem: str | None) -> dict[str, Any]:
    """check_onnx's fields before (or without) a check."""
    unknown = dict.fromkeys(("max_logit_diff", "top1_agreement", "test_accuracy"))
    return {"verified": False, "problem": problem, **unknown, "test_images": len(data.test)}


def _int8_section(
    folder: Path, fp32_accuracy: float, data: Dataset, cfg: ExportConfig
) -> dict[str, Any]:
    """The card's ``onnx.int8``: size, accuracy and latency of the quantized copy."""
    fp32, out = folder / ONNX_FILE, folder / INT8_FILE
    section: dict[str, Any] = {
        "file": INT8_FILE,
        **dict.fromkeys(("bytes", "size_ratio", "test_accuracy", "accuracy_drop")),
        "calibration_images": min(cfg.calibration_images, len(data.train)),
        "format": INT8_FORMAT,
        "latency_ms": None,
        "problem": None,
    }
    size = int(data.test.x.shape[-1])
    try:
        quantize_int8(fp32, out, data, cfg.calibration_images)
        accuracy = ort_accuracy(out, data)
        latency = ort_latency(out, size, cfg.latency_threads, cfg.latency_runs)
    except ExportError as exc:  # the fp32 file stands on its own; int8 says what went wrong
        return section | {"problem": str(exc)}
    return section | {
        "bytes": out.stat().st_size,
        "size_ratio": out.stat().st_size / fp32.stat().st_size,
        "test_accuracy": accuracy,
        "accuracy_drop": fp32_accuracy - accuracy,
        "latency_ms": latency,
    }


def export_pick(
    folder: Path, spec: ModelSpec, weights: Path, data: Dataset, cfg: ExportConfig
) -> dict[str, Any]:
    """Everything for one selected model in ``folder``; returns the card's ``onnx`` section.
    Never raises for a bad model: ``verified`` False and ``problem`` say why. An unverified
    model.onnx is left for inspection, but gets no int8 copy nor latency. A file that
    cannot be written (disk full, ...) is `job.collect.outputs.OutputError`."""
    try:
        model = load_weights(spec, weights)
    except ExportError as exc:
        return _head(cfg) | _unverified(data, str(exc)) | _tail(cfg)
    return export_model(folder, model, data, cfg)


def _head(cfg: ExportConfig) -> dict[str, Any]:
    return {"file": ONNX_FILE, "opset": cfg.opset, "bytes": None}


def _tail(cfg: ExportConfig) -> dict[str, Any]:
    return {"tolerance": cfg.max_logit_diff, "latency_ms": None, "int8": None}


def export_model(
    folder: Path, model: nn.Module, data: Dataset, cfg: ExportConfig
) -> dict[str, Any]:
    """`export_pick` for a network already loaded (`load_weights`)."""
    path, size = folder / ONNX_FILE, int(data.test.x.shape[-1])
    # Files of an earlier run must not outlive a failure of this one beside its card.
    for stale in (path, folder / INT8_FILE):
        stale.unlink(missing_ok=True)
    head, tail = _head(cfg), _tail(cfg)
    try:
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
        export_onnx(model, size, path, cfg.opset)
    except ExportError as exc:
        return head | _unverified(data, str(exc)) | tail
    head["bytes"] = path.stat().st_size
    card = head | check_onnx(path, model, data, cfg.max_logit_diff) | tail
    if not card["verified"]:
        return card
    try:
        card["latency_ms"] = ort_latency(path, size, cfg.latency_threads, cfg.latency_runs)
    except ExportError as exc:
        return card | {"verified": False, "problem": str(exc)}
    if cfg.int8:
        card["int8"] = _int8_section(folder, card["test_accuracy"], data, cfg)
    return card
