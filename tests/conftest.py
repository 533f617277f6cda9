"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
from search_fixtures import prepare_data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A TFDS data dir with fake cifar10/cifar100 and the synthetic dataset prepared."""
    return prepare_data_dir(tmp_path_factory.mktemp("tfds"), tmp_path_factory.mktemp("sources"))
