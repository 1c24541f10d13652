"""Shared fixtures: small real data (scikit-learn's digits) and the repo root."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from job.config import DataConfig
from job.data import Dataset, load_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits16() -> Dataset:
    """Digits at 16x16: 600 train images, stratified; loads in well under a second."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load_data(DataConfig(name="digits", image_size=16, subset=600, val_ratio=0.2))
