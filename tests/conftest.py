"""Shared test settings: deterministic, single-threaded torch (CI has 2 cores), no user data root."""

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(int(os.environ.get("KDLIB_TEST_THREADS", "1")))
    torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
