"""job/ml/augment_ops.py: every op in the table, on uint8 and float, and its semantics
vs PIL/torchvision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from job.ml.augment_ops import OPS, apply_op
from tests.support.data import DEVICES, images

N_LEVEL = 31
# ops whose level 0 is "do nothing" (Solarize 256, Posterize 8 bits, factor 1, no box...)
IDENTITY_AT_ZERO = set(OPS) - {"AutoContrast", "Equalize", "Invert"}


def _magnitude(name: str, level: int, sign: float = 1.0) -> float:
    spec = OPS[name]
    m = spec.low + (spec.high - spec.low) * level / N_LEVEL
    return m * sign if spec.signed else m


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("level", [0, N_LEVEL])
@pytest.mark.parametrize("name", list(OPS))
def test_every_op_keeps_shape_dtype_and_range(name, level, dtype, device):
    x = images(dtype, device)
    for sign in (1.0, -1.0) if OPS[name].signed else (1.0,):
        g = torch.Generator(device=device).manual_seed(0)
        y = apply_op(name, x, _magnitude(name, level, sign), generator=g)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        top = 255 if dtype == torch.uint8 else 1.0
        assert y.min() >= 0 and y.max() <= top
        assert torch.isfinite(y.float()).all()
        if level == 0 and name in IDENTITY_AT_ZERO:
            tolerance = 0.0 if dtype == torch.uint8 else 1e-6  # float: within rounding
            assert (y.double() - x.double()).abs().max() <= tolerance, name


def test_apply_op_rejects_unknown_name():
    with pytest.raises(ValueError, match="Blur"):
        apply_op("Blur", images(torch.uint8), 1.0)


def test_invert_and_solarize_threshold():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(apply_op("Invert", x, 0.0), 255 - x)
    y = apply_op("Solarize", x, 128.0)  # pixels >= 128 are inverted, the rest kept
    expected = torch.where(x >= 128, 255 - x, x)
    assert torch.equal(y, expected)
    yf = apply_op("Solarize", x.float() / 255, 128.0)
    assert torch.allclose(yf, expected.float() / 255, atol=1e-6)
    assert torch.equal(apply_op("Solarize", x, 0.0), 255 - x)  # threshold 0: all inverted


@pytest.mark.parametrize(("magnitude", "mask"), [(4.0, 0xF0), (5.6, 0xFC), (8.0, 0xFF)])
def test_posterize_keeps_the_top_bits(magnitude, mask):
    x = images(torch.uint8, size=8)
    assert torch.equal(apply_op("Posterize", x, magnitude), x & mask)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_translate_shifts_whole_pixels_and_fills_grey(dtype):
    x = images(dtype, size=16)
    grey = 128 if dtype == torch.uint8 else 128 / 255
    right = apply_op("TranslateX", x, 0.25)  # 4 of 16 pixels, content moves right
    assert torch.equal(right[..., 4:], x[..., :-4])
    assert torch.allclose(right[..., :4].double(), torch.full_like(right[..., :4].double(), grey))
    up = apply_op("TranslateY", x, -0.25)  # content moves up, grey at the bottom
    assert torch.equal(up[..., :-4, :], x[..., 4:, :])
    assert torch.allclose(up[..., -4:, :].double(), torch.full_like(up[..., -4:, :].double(), grey))


def test_rotate_is_counter_clockwise_and_fills_corners_grey():
    x = images(torch.uint8, size=16)
    assert torch.equal(apply_op("Rotate", x, 90.0), torch.rot90(x, 1, dims=(2, 3)))
    y = apply_op("Rotate", x, 30.0)
    assert (y[:, :, 0, 0] == 128).all() and (y[:, :, -1, -1] == 128).all()
    assert torch.equal(y[:, :, 8, 8], x[:, :, 8, 8])  # the centre stays


def test_shear_x_is_about_the_top_left_corner_like_pil():
    x = images(torch.uint8, size=32)
    y = apply_op("ShearX", x, 0.3)  # in_x = out_x + 0.3 * out_y (pixel centres)
    assert torch.equal(y[:, :, 0], x[:, :, 0])
    assert torch.equal(y[:, :, 31, :23], x[:, :, 31, 9:])  # 0.3 * 31.5 = 9.45 → 9 px
    assert (y[:, :, 31, 23:] == 128).all()


def test_equalize_matches_pil_and_flattens_the_histogram():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(90, 150, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = apply_op("Equalize", x, 0.0)
    for i in range(2):
        img = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        pil = torch.from_numpy(np.array(ImageOps.equalize(img))).permute(2, 0, 1)
        assert torch.equal(y[i], pil)
    # PIL's integer step saturates the top on small images; 128x128 is large enough
    big = torch.randint(90, 150, (1, 1, 128, 128), generator=g, dtype=torch.uint8)
    counts = torch.bincount(apply_op("Equalize", big, 0.0).flatten().long() // 64, minlength=4)
    assert ((counts - 4096).abs() < 0.15 * 4096).all(), counts  # 4 near-equal quarters
    flat = torch.full((1, 3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(apply_op("Equalize", flat, 0.0), flat)  # constant: unchanged, like PIL


def test_colour_ops_blend_towards_their_degenerate_image():
    x = images(torch.float32, size=8)
    assert torch.allclose(apply_op("Brightness", x, -0.5), x * 0.5, atol=1e-6)
    grey = apply_op("Color", x, -1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6)
    flat = apply_op("Contrast", x, -1.0)
    assert torch.allclose(flat, flat[:, :1, :1, :1].expand_as(flat), atol=1e-6)
    sharp = apply_op("Sharpness", x, 0.9)
    assert torch.equal(sharp[:, :, 0], x[:, :, 0]) and torch.equal(sharp[:, :, :, -1], x[..., -1])
    auto = apply_op("AutoContrast", x, 0.0)
    assert torch.allclose(auto.amin(dim=(2, 3)), torch.zeros(4, 3), atol=1e-6)
    assert torch.allclose(auto.amax(dim=(2, 3)), torch.ones(4, 3), atol=1e-6)


def _torchvision_reference(name: str, x: torch.Tensor, m: float) -> torch.Tensor:
    tf = pytest.importorskip("torchvision.transforms.v2.functional")
    from torchvision.transforms import InterpolationMode

    nearest = {"interpolation": InterpolationMode.NEAREST, "fill": 128}
    shear = math.degrees(math.atan(m))
    still = {"angle": 0.0, "scale": 1.0, **nearest}
    side = x.shape[-1]
    calls = {
        "Rotate": lambda: tf.rotate(x, m, **nearest),
        "ShearX": lambda: tf.affine(
            x, translate=[0, 0], shear=[shear, 0.0], center=[0, 0], **still
        ),
        "ShearY": lambda: tf.affine(
            x, translate=[0, 0], shear=[0.0, shear], center=[0, 0], **still
        ),
        "TranslateX": lambda: tf.affine(
            x, translate=[round(m * side), 0], shear=[0.0, 0.0], **still
        ),
        "TranslateY": lambda: tf.affine(
            x, translate=[0, round(m * side)], shear=[0.0, 0.0], **still
        ),
        "Solarize": lambda: tf.solarize(x, m),
        "Posterize": lambda: tf.posterize(x, int(m)),
        "AutoContrast": lambda: tf.autocontrast(x),
        "Equalize": lambda: tf.equalize(x),
        "Invert": lambda: tf.invert(x),
        "Color": lambda: tf.adjust_saturation(x, 1 + m),
        "Contrast": lambda: tf.adjust_contrast(x, 1 + m),
        "Brightness": lambda: tf.adjust_brightness(x, 1 + m),
        "Sharpness": lambda: tf.adjust_sharpness(x, 1 + m),
    }
    return calls[name]()


# (op, magnitude, max |difference|): geometry exact, colour ops round differently
TORCHVISION_CASES = [
    ("Rotate", 30.0, 0),
    ("Rotate", -17.0, 0),
    ("ShearX", 0.3, 0),
    ("ShearY", -0.2, 0),
    ("TranslateX", 0.25, 0),
    ("TranslateY", -0.25, 0),
    ("Solarize", 100.0, 0),
    ("Posterize", 5.0, 0),
    ("AutoContrast", 0.0, 0),
    ("Equalize", 0.0, 0),
    ("Invert", 0.0, 0),
    ("Color", -0.6, 1),
    ("Contrast", 0.3, 1),
    ("Brightness", -0.6, 1),
    ("Sharpness", 0.9, 1),
]


@pytest.mark.parametrize(("name", "m", "tolerance"), TORCHVISION_CASES)
def test_ops_agree_with_torchvision_on_uint8(name, m, tolerance):
    """An outside oracle: geometry (direction, centre, grey fill) exact, colour ops within 1."""
    x = images(torch.uint8, b=4, size=32, seed=3)
    diff = (apply_op(name, x, m).int() - _torchvision_reference(name, x, m).int()).abs()
    assert diff.max() <= tolerance, name
