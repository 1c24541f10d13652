"""Stage 2 of the data path, data — its images: one file decoded, a batch prepared.

`read_image` decodes one image file in any mode Pillow reads into 8-bit RGB (or a
`DataError` naming the file); `prepare_images` turns a batch into what training indexes:
square-padded with grey `FILL`, resized (antialiased bilinear) to the configured side,
3 channels, uint8. The sources (`job.ml.sources`) decode with the one and prepare with
the other; `job.ml.data` prepares the splits it cuts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from job.ml.errors import DataError

FILL = 128  # grey of the square padding (the seed's, docs/ARCHITECTURE.md)
_CHUNK_ELEMS = 1 << 23  # elements per pad/resize chunk: bounds float copies of a big set

Pixels = NDArray[np.uint8]
Labels = NDArray[np.int64]


def _pad_square(x: Tensor) -> Tensor:
    """(N, C, H, W) → (N, C, L, L), L = max(H, W): short side padded grey, centred."""
    n, c, h, w = x.shape
    if h == w:
        return x
    side = max(h, w)
    out = torch.full((n, c, side, side), FILL, dtype=x.dtype, device=x.device)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, :, top : top + h, left : left + w] = x
    return out


def _resize(x: Tensor, size: int) -> Tensor:
    """(N, 3, L, L) uint8 → (N, 3, size, size) uint8; untouched when L == size."""
    if x.shape[-1] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def prepare_images(x: Tensor, size: int) -> Tensor:
    """Same-shape batch (N, C∈{1,3}, H, W) uint8 → (N, 3, size, size) uint8; chunked, so a
    large source never exists as float all at once."""
    n, _, h, w = x.shape
    out = torch.empty((n, 3, size, size), dtype=torch.uint8, device=x.device)
    step = max(1, _CHUNK_ELEMS // (3 * max(h, w) ** 2))
    for start in range(0, n, step):
        part = x[start : start + step]
        if part.shape[1] == 1:  # grey: the same plane in every channel
            part = part.expand(-1, 3, -1, -1)
        out[start : start + step] = _resize(_pad_square(part), size)
    return out


def prepare_mixed(images: Sequence[Pixels], size: int) -> Tensor:
    """Images of mixed sizes, each (C, H, W), C in {1, 3}: batched per shape to keep resizing
    vectorised."""
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    for index in groups.values():
        batch = torch.from_numpy(np.stack([images[i] for i in index]))  # (B, 3, H, W)
        out[torch.tensor(index)] = prepare_images(batch, size)
    return out


# Pillow's modes by what becomes of them (https://pillow.readthedocs.io, "Modes"): 8 bits a
# channel, converted by Pillow; with alpha, composited over FILL grey (a transparent pixel's
# colour is undefined: it looks like the padding); 16-bit grey (PNG, TIFF; PGM as "I")
# scaled to 8 bits. Pillow reads 16-bit RGB(A) PNGs as 8-bit "RGB"/"RGBA" itself, by the
# high byte; 16-bit grey keeps the high byte too, so both agree. Any other mode is refused.
_EIGHT_BIT = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA = frozenset({"LA", "PA", "RGBA", "RGBa"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _to_rgb(image: Image.Image, file: Path) -> Pixels:
    """A decoded image in any mode Pillow reads → (H, W, 3) uint8, by the rules above;
    `DataError` naming the file for a mode (or values) with no faithful 8-bit form."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.int64)  # (H, W): uint16, or int32 for "I"
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:  # a 32-bit "I" image (TIFF) beyond 16 bits
            raise DataError(
                f"{file}: mode {mode} values {low}..{high} do not fit 16 bits (0..65535); "
                f"cannot scale them to 8 (save it as 8- or 16-bit)"
            )
        grey = (values >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":  # 32-bit float (TIFF): intensities in [0, 1]
        floats = np.asarray(image, dtype=np.float64)
        inside = bool(np.isfinite(floats).all()) and (
            not floats.size or (floats.min() >= 0.0 and floats.max() <= 1.0)
        )
        if not inside:
            shown = f"{np.nanmin(floats):g}..{np.nanmax(floats):g}" if floats.size else ""
            raise DataError(
                f"{file}: mode F (32-bit float) values must lie in [0, 1], found {shown} "
                f"(save it as 8- or 16-bit)"
            )
        grey = np.rint(floats * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in _ALPHA or (mode in _EIGHT_BIT and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)  # (H, W, 4)
        alpha = rgba[..., 3:]
        mixed = rgba[..., :3] * alpha + FILL * (255 - alpha)  # 255 x the composite
        return ((mixed + 127) // 255).astype(np.uint8)  # rounded to the nearest level
    if mode in _EIGHT_BIT:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    raise DataError(f"{file}: image mode {mode} has no conversion to 8-bit RGB here")


def read_image(file: Path) -> Pixels:
    """One image file → (3, H, W) uint8: every mode as `_to_rgb` says (grey, palette,
    alpha, 16-bit and float images become 8-bit RGB) or a `DataError` naming the file."""
    try:
        with Image.open(file) as image:
            rgb = _to_rgb(image, file)  # (H, W, 3)
    except DataError:
        raise
    except OSError as exc:  # PIL's "cannot identify image file", or the OS's own
        why = exc.strerror or f"{type(exc).__name__}: {exc}"
        raise DataError(f"{file}: cannot read image ({why})") from None
    except Exception as exc:  # PIL's plugins raise ValueError, SyntaxError, ...
        raise DataError(f"{file}: cannot read image ({type(exc).__name__}: {exc})") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def real_photos(image_size: int = 32) -> Tensor:
    """scikit-learn's two sample photos (china.jpg, flower.jpg) → uint8 (2, 3, S, S)."""
    from sklearn.datasets import load_sample_images

    photos = np.stack(load_sample_images().images)  # (2, 427, 640, 3) uint8
    return prepare_images(torch.from_numpy(photos).permute(0, 3, 1, 2), image_size)
