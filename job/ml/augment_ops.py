"""Stage 3 of the data path, augment — its ops: the table of batched image operations.

``OPS`` maps an op's name to ``OpSpec(fn, low, high, signed)``: ``fn(x, m)`` works on a
whole float batch ``(B, C, H, W)`` in [0, 1] with one magnitude per image ``m`` (B,), so
every image can take its own strength. A level's magnitude is
``low + (high - low) * level / n_level``, negated for a random half of the images when
``signed``. Semantics follow PIL / torchvision (checked against torchvision in the
tests); the code is our own, batched, for CPU and CUDA alike. ``job.ml.augment`` builds
RandAugment, flip and Cutout on top of this table.

The names, ranges and signs come from the torch-free table ``job.ml.vocab.OPS`` (what
the config validates against); this module adds the function of each (``_FUNCTIONS``)
and refuses to import unless the two tables name exactly the same ops. Adding an op is
a row in ``job.ml.vocab.OPS``, a row in ``_FUNCTIONS`` and the function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from job.ml.vocab import DEFAULT_OPS, GREY, same_names
from job.ml.vocab import OPS as RANGES

__all__ = [
    "DEFAULT_OPS",
    "FILL",
    "GREY",
    "OPS",
    "AffineOp",
    "Gen",
    "OpFn",
    "OpSpec",
    "affine",
    "apply_op",
    "box",
    "from_float",
    "to_float",
]

FILL = GREY / 255.0
Gen = torch.Generator | None


class OpFn(Protocol):
    """``fn(x, m)``; ``fill`` (0..1) and ``generator`` are passed, most ops ignore them."""

    def __call__(
        self, x: Tensor, m: Tensor, /, *, fill: float = ..., generator: Gen = ...
    ) -> Tensor: ...


class OpSpec(NamedTuple):
    fn: OpFn
    low: float  # magnitude at level 0
    high: float  # magnitude at level n_level
    signed: bool  # negated for a random half of the images


def _blend(x: Tensor, other: Tensor, m: Tensor) -> Tensor:
    """PIL's ImageEnhance: ``other + factor * (x - other)`` with factor = 1 + m."""
    factor = (1.0 + m).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return (x - other).mul_(factor).add_(other).clamp_(0.0, 1.0)  # in place: one allocation


def _grey(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma ``(B, 1, H, W)`` of RGB images, as PIL's convert("L")."""
    grey = x[:, 0:1] * 0.299  # (B, 1, H, W)
    return grey.add_(x[:, 1:2], alpha=0.587).add_(x[:, 2:3], alpha=0.114)


def affine(x: Tensor, theta: Tensor, fill: float) -> Tensor:
    """Resample with per-image maps ``in = theta @ (out, 1)``, ``theta`` (B, 2, 3) in pixels,
    (x, y) with y down, about the centre. Nearest sampling of ``x - fill`` with zero padding,
    plus ``fill``, makes every sample outside the image exactly ``fill``, edges included."""
    h, w = x.shape[2], x.shape[3]
    # theta @ (u, v, 1) in [-1, 1], broadcast in planar layout: faster than F.affine_grid
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device).view(1, 2, 1)
    theta = theta.to(x.dtype) * scale  # (B, 2, 3)
    u = torch.arange(w, dtype=x.dtype, device=x.device) + (0.5 - w / 2)  # pixel centres
    v = torch.arange(h, dtype=x.dtype, device=x.device) + (0.5 - h / 2)
    along_u = theta[:, :, 0:1] * u + theta[:, :, 2:3]  # (B, 2, W)
    along_v = theta[:, :, 1:2] * v  # (B, 2, H)
    grid = (along_u.unsqueeze(2) + along_v.unsqueeze(3)).permute(0, 2, 3, 1)  # (B, H, W, 2)
    out = F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.add_(fill)  # (B, C, H, W)


def _theta(*entries: Tensor | float, like: Tensor) -> Tensor:
    """(B, 2, 3) from six entries, row-major; a float is the same for every image."""
    cols = [e if isinstance(e, Tensor) else torch.full_like(like, e) for e in entries]
    return torch.stack(cols, dim=1).view(-1, 2, 3)


def _rotation(m: Tensor, h: int, w: int) -> Tensor:
    """Counter-clockwise by ``m`` degrees about the centre, like PIL and torchvision."""
    rad = m * (math.pi / 180.0)
    cos, sin = rad.cos(), rad.sin()
    return _theta(cos, -sin, 0.0, sin, cos, 0.0, like=m)


# maps per geometric op; shears as PIL's about the top-left corner, whole-pixel translations
_MATRICES: dict[str, Callable[[Tensor, int, int], Tensor]] = {
    "Rotate": _rotation,
    "ShearX": lambda m, h, w: _theta(1.0, m, m * (h / 2), 0.0, 1.0, 0.0, like=m),
    "ShearY": lambda m, h, w: _theta(1.0, 0.0, 0.0, m, 1.0, m * (w / 2), like=m),
    "TranslateX": lambda m, h, w: _theta(1.0, 0.0, -(m * w).round(), 0.0, 1.0, 0.0, like=m),
    "TranslateY": lambda m, h, w: _theta(1.0, 0.0, 0.0, 0.0, 1.0, -(m * h).round(), like=m),
}


class AffineOp:
    """A geometric op: ``matrix(m, H, W) -> (B, 2, 3)``, then a resample. ``rand_augment``
    stacks the matrices of all geometric ops of a slot and resamples them together."""

    def __init__(self, matrix: Callable[[Tensor, int, int], Tensor]) -> None:
        self.matrix = matrix

    def __call__(self, x: Tensor, m: Tensor, /, *, fill: float = FILL, **_: object) -> Tensor:
        return affine(x, self.matrix(m, x.shape[2], x.shape[3]), fill)


def _identity(x: Tensor, m: Tensor, **_: object) -> Tensor:
    return x


def _auto_contrast(x: Tensor, m: Tensor, **_: object) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    span = x.amax(dim=(2, 3), keepdim=True) - lo
    flat = span <= 0  # a constant channel stays as it is, like PIL
    return ((x - lo * ~flat) / span.masked_fill(flat, 1.0)).clamp_(0.0, 1.0)


def _equalize(x: Tensor, m: Tensor, **_: object) -> Tensor:
    """PIL's ImageOps.equalize per image and channel, on uint8 levels, all rows at once."""
    b, c, h, w = x.shape
    rows, n = b * c, h * w
    q = (x * 255.0).round_().long().reshape(rows, n)  # (B*C, H*W) levels 0..255
    # one 256-bin histogram per row in a single batched scatter_add along the levels
    hist = torch.zeros(rows, 256, dtype=torch.int32, device=x.device)
    hist.scatter_add_(1, q, torch.ones(1, 1, dtype=torch.int32, device=x.device).expand_as(q))
    # PIL's integer arithmetic, in float64: exact, and much faster on CPU than int64
    hist_f = hist.to(torch.float64)
    cum = hist_f.cumsum(dim=1)  # (B*C, 256)
    top = (cum < n).sum(dim=1, keepdim=True)  # (B*C, 1) PIL's last non-empty bin
    step = ((n - hist_f.gather(1, top)) / 255.0).floor_()  # (B*C, 1)
    below = cum - hist_f  # pixels strictly below each level
    lut = below.add_((step / 2).floor_()).div_(step.clamp(min=1.0)).floor_().clamp_(max=255.0)
    # step 0 (a near-constant channel): PIL leaves it unchanged, an identity table
    levels = torch.arange(256, dtype=lut.dtype, device=x.device)
    lut = torch.where(step > 0, lut, levels).div_(255.0).to(x.dtype)  # (B*C, 256)
    return lut.gather(1, q).reshape(b, c, h, w)


def _solarize(x: Tensor, m: Tensor, **_: object) -> Tensor:
    thr = (m / 255.0).view(-1, 1, 1, 1)  # uint8 units, rounded like the uint8 → float input
    # s + x (1 - 2s): exactly 1 - x or x; full-size bool masks (where) are slow on CPU
    s = torch.ge(x, thr, out=torch.empty_like(x))  # (B, C, H, W) 1.0 where inverted
    return torch.addcmul(s, x, s.mul(-2.0).add_(1.0))


def _posterize(x: Tensor, m: Tensor, **_: object) -> Tensor:
    bits = m.round().clamp(1, 8).view(-1, 1, 1, 1)
    step = torch.exp2(8.0 - bits)  # keep the top `bits` bits of the uint8 level
    # floor(round(v) / step) == floor((v + 0.5) / step) for an even step: one pass fewer
    out = (x * (255.0 / step)).add_(0.5 / step).floor_().mul_(step / 255.0)
    return torch.where(bits >= 8, x, out)  # 8 bits is exactly identity, also for float input


def _color(x: Tensor, m: Tensor, **_: object) -> Tensor:
    return _blend(x, _grey(x), m)


def _contrast(x: Tensor, m: Tensor, **_: object) -> Tensor:
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), m)  # towards the mean grey


def _brightness(x: Tensor, m: Tensor, **_: object) -> Tensor:
    return (x * (1.0 + m).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)  # a blend with black


def _sharpness(x: Tensor, m: Tensor, **_: object) -> Tensor:
    """Blend with PIL's SMOOTH filter [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, border kept."""
    if x.shape[2] < 3 or x.shape[3] < 3:
        return x
    # a 3x3 box sum plus 4x the centre, by shifted slices: several times faster than conv2d
    inner = x[:, :, 1:-1, 1:-1]  # (B, C, H-2, W-2)
    rows = x[:, :, :-2] + x[:, :, 1:-1]  # (B, C, H-2, W)
    smooth = rows.add_(x[:, :, 2:])[..., :-2] + rows[..., 1:-1]  # (B, C, H-2, W-2)
    smooth.add_(rows[..., 2:]).add_(inner, alpha=4.0).div_(13.0)
    out = x.clone()  # PIL's filter keeps the one-pixel border, where the blend is x
    factor = (1.0 + m).view(-1, 1, 1, 1)
    out[:, :, 1:-1, 1:-1] = smooth.lerp_(inner, factor).clamp_(0.0, 1.0)  # s + f (x - s)
    return out


def _invert(x: Tensor, m: Tensor, **_: object) -> Tensor:
    return 1.0 - x


def box(h: int, w: int, side: Tensor, centre: Tensor, dtype: torch.dtype) -> Tensor:
    """0/1 mask ``(B, 1, H, W)`` of squares of ``side`` pixels (B,) at ``centre`` (B, 2) in
    [0, 1), clipped at the border. Float for ``lerp``: exact at 0 and 1, fast on CPU."""
    y0 = (centre[:, 0] * h).floor().long() - side // 2  # (B,)
    x0 = (centre[:, 1] * w).floor().long() - side // 2
    rows = torch.arange(h, device=side.device)
    cols = torch.arange(w, device=side.device)
    in_y = (rows >= y0[:, None]) & (rows < (y0 + side)[:, None])  # (B, H)
    in_x = (cols >= x0[:, None]) & (cols < (x0 + side)[:, None])  # (B, W)
    return in_y.to(dtype)[:, None, :, None] * in_x.to(dtype)[:, None, None, :]


def _cutout(x: Tensor, m: Tensor, *, fill: float = FILL, generator: Gen = None) -> Tensor:
    b, h, w = x.shape[0], x.shape[2], x.shape[3]
    side = (m * min(h, w)).round().long()  # (B,) m is a fraction of the side
    centre = torch.rand(b, 2, generator=generator, device=x.device)
    grey = torch.full((), fill, dtype=x.dtype, device=x.device)
    return x.lerp(grey, box(h, w, side, centre, x.dtype))


_FUNCTIONS: dict[str, OpFn] = {
    "Identity": _identity,
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Rotate": AffineOp(_MATRICES["Rotate"]),
    "Solarize": _solarize,
    "Color": _color,
    "Contrast": _contrast,
    "Brightness": _brightness,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "ShearX": AffineOp(_MATRICES["ShearX"]),
    "ShearY": AffineOp(_MATRICES["ShearY"]),
    "TranslateX": AffineOp(_MATRICES["TranslateX"]),
    "TranslateY": AffineOp(_MATRICES["TranslateY"]),
    "Invert": _invert,
    "Cutout": _cutout,
}
same_names("job.ml.vocab.OPS", RANGES, "job.ml.augment_ops._FUNCTIONS", _FUNCTIONS)

# In job.ml.vocab's order (the config's messages list the ops so).
OPS: dict[str, OpSpec] = {name: OpSpec(_FUNCTIONS[name], *RANGES[name]) for name in RANGES}


def to_float(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``x`` as float in [0, 1], contiguous, into ``out`` or a fresh tensor, in one pass."""
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise TypeError(f"images must be uint8 or float, got {x.dtype}")
    dtype = torch.float32 if x.dtype == torch.uint8 else x.dtype
    out = torch.empty(x.shape, dtype=dtype, device=x.device) if out is None else out
    return torch.div(x, 255.0, out=out) if x.dtype == torch.uint8 else out.copy_(x)


def from_float(y: Tensor, dtype: torch.dtype) -> Tensor:
    """Back to ``dtype``, overwriting ``y`` (always a scratch tensor of ours)."""
    if dtype == torch.uint8:
        return y.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return y.clamp_(0.0, 1.0).to(dtype)


def apply_op(
    name: str, x: Tensor, magnitude: float | Tensor, *, fill: int = GREY, generator: Gen = None
) -> Tensor:
    """One op on a batch ``(B, C, H, W)``, magnitude scalar or ``(B,)``, signed as given."""
    if name not in OPS:
        raise ValueError(f"unknown augment op {name!r}; known: {sorted(OPS)}")
    y = to_float(x)
    m = torch.as_tensor(magnitude, dtype=y.dtype, device=y.device).expand(y.shape[0])  # (B,)
    return from_float(OPS[name].fn(y, m, fill=fill / 255.0, generator=generator), x.dtype)
