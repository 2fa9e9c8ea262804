"""Where the parity fixtures live (../shared beside the checkout, or GLIP_SHARED_DIR).

A module of its own, not conftest.py: tests import these names, and ``import conftest`` finds whichever
conftest.py pytest loaded first (test/train has one too), so ``pytest test/test_cli.py test/train`` failed.
"""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("GLIP_SHARED_DIR", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "glip"
REDUCED = FIXTURES / "glip_t_reduced"


def require_fixtures() -> pathlib.Path:
    if not (REDUCED / "tensors_fp32.npz").is_file():
        pytest.skip(
            f"GLIP parity fixtures not found at {FIXTURES} (set GLIP_SHARED_DIR to the shared folder)"
        )
    return FIXTURES
