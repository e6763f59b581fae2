"""Shared test fixtures. GPU tests are marked ``@pytest.mark.gpu`` and skip cleanly without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test leaves torch's thread count as it found it: a test that trains in this process and compares
    bit for bit with a subprocess (``test_train``'s resume tests) needs the same reduction order."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """The real-world clips in ../shared/videos; tests using them skip where the folder is absent."""
    folder = Path(os.environ.get("FASTCVRL_SHARED_VIDEOS", SHARED_VIDEOS))
    if not folder.is_dir() or not any(folder.glob("*.mp4")):
        pytest.skip(f"real-world sample videos not found in {folder}")
    return folder
