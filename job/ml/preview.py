"""A look at the augment stage: every policy op at three magnitudes, as one PNG.

`python -m job augment-preview --config F --out PNG` draws a grid: one row per op of
the config's policy list, and for each of four images (the two photos scikit-learn
ships, two images of the configured data set) the op at levels n_level/3, 2n_level/3
and n_level. Signed ops are shown with the positive sign. It runs the very functions
training runs (`job.ml.augment.apply_op`), so what you see is what the network sees.
`sampled_preview_images` gives the same tiles from a few decoded images (the report's
preview), `preview_images` from the loaded data set's train split (the verb's).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from job.config import Config
from job.files import make_folder, write_atomic, writing
from job.ml.augment import OPS, apply_op
from job.ml.data import load_data, real_photos
from job.ml.sources import sample_images

LABEL_WIDTH = 120
HEADER = 36


def preview_images(config: Config, size: int) -> tuple[Tensor, list[str]]:
    """Two real photos and two data images of different classes, uint8 (4, 3, s, s); the
    data images are the train split's first and the first of another class (the whole
    data set is loaded: `sampled_preview_images` decodes only what it shows)."""
    data = load_data(config.data)
    y = data.train.y
    first = 0
    second = int((y != y[first]).nonzero()[0]) if bool((y != y[first]).any()) else 1
    return _with_photos(
        data.train.x[[first, second]], y[[first, second]], data.classes, config, size
    )


def sampled_preview_images(config: Config, size: int, n: int = 2) -> tuple[Tensor, list[str]]:
    """As `preview_images`: two real photos, then `n` images of the data (of `n` classes
    when it has them), uint8 (2 + n, 3, s, s), and a name per tile; only those `n` images
    are decoded (`job.ml.sources.sample_images`), never the whole data set, so they are
    the source's first of each class, not necessarily of the train split. `DataError`
    for a missing or unreadable source."""
    sample, classes = sample_images(config.data, n)
    return _with_photos(sample.x, sample.y, classes, config, size)


def _with_photos(
    x: Tensor, y: Tensor, classes: tuple[str, ...], config: Config, size: int
) -> tuple[Tensor, list[str]]:
    """The two photos, then data images x (n, 3, S, S) uint8 of labels y (n,), at `size`."""
    # Nearest upscaling keeps the data's real pixels visible at tile size.
    picked = F.interpolate(x.float(), size=(size, size), mode="nearest").round().to(torch.uint8)
    names = ["photo 1", "photo 2"] + [f"{config.data.name}: {classes[int(c)]}" for c in y]
    return torch.cat([real_photos(size), picked]), names


def preview_levels(n_level: int) -> list[int]:
    return [round(n_level / 3), round(2 * n_level / 3), n_level]


def _to_pil(x: Tensor) -> Image.Image:
    """uint8 (3, H, W) → PIL image."""
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())


def policy_levels(level: int | None, n_level: int) -> list[int]:
    """The levels a policy applies its ops at: its own, or, where it draws one per op
    and image (`level: null`), the range's middle and top."""
    return [level] if level is not None else [round(n_level / 2), n_level]


def render_grid(
    images: Tensor,
    names: list[str],
    ops: tuple[str, ...],
    n_level: int,
    levels: list[int] | None = None,
) -> Image.Image:
    """The grid as a PIL image; rows are ops, columns are (image, level) pairs, at
    `levels` (default n/3, 2n/3 and n: the whole range)."""
    n, _, size, _ = images.shape  # (n, 3, size, size)
    levels = preview_levels(n_level) if levels is None else levels
    cols = n * (len(levels) + 1)
    pad = 4
    canvas = Image.new(
        "RGB",
        (LABEL_WIDTH + cols * (size + pad), HEADER + (len(ops) + 1) * (size + pad)),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names):
        x0 = LABEL_WIDTH + i * (len(levels) + 1) * (size + pad)
        draw.text((x0, 4), name, fill="black")
        for j, level in enumerate(["orig", *levels]):
            draw.text((x0 + j * (size + pad), 20), str(level), fill="gray")
    for row, op in enumerate(ops):
        y0 = HEADER + row * (size + pad)
        spec = OPS[op]
        draw.text((4, y0 + size // 2 - 6), op, fill="black")
        tiles = [images]
        for level in levels:
            magnitude = spec.low + (spec.high - spec.low) * level / n_level
            tiles.append(apply_op(op, images, magnitude))  # (n, 3, size, size)
        for i in range(n):
            for j, batch in enumerate(tiles):
                x0 = LABEL_WIDTH + (i * len(tiles) + j) * (size + pad)
                canvas.paste(_to_pil(batch[i]), (x0, y0))
    return canvas


def write_preview(config: Config, out: Path, size: int = 96) -> Path:
    """Render the preview for the config's policy list and save it as PNG (atomically),
    making `out`'s folder when it is missing, as every verb's `--out` does. Rendered
    first, so a bad config or data set leaves nothing behind; a folder that cannot be
    made is `OutputFolderError` naming `--out` (exit 2; no part of it left), a PNG that
    cannot be written `OutputError` naming the file (exit 1)."""
    images, names = preview_images(config, size)
    grid = render_grid(images, names, config.augment.ops, config.augment.n_level)
    make_folder(out.parent, "--out")
    with writing(out):
        write_atomic(out, lambda tmp: grid.save(tmp, format="PNG"))
    return out
