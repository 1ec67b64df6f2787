"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    """A toy 3DIdent train (200 images) and test (96) dataset in the renderer's format, in which
    every factor is visible (see ``test_threedident_train.write_toy_dataset``)."""
    from test_threedident_train import write_toy_dataset

    base = tmp_path_factory.mktemp("toy3did")
    return {
        "train": write_toy_dataset(base / "train", 200, seed=1),
        "test": write_toy_dataset(base / "test", 96, seed=2),
    }
