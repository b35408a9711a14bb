"""Fixtures of the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from prep_helpers import REAL_DATA


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "grid" / "s1").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (GRID, FSDD and MNIST are read from ../shared/data)")
    return REAL_DATA.resolve()
