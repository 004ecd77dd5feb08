"""Fixtures for the core tests."""

import pytest

from .tiny import make_tiny_model


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def tiny_memory_model():
    return make_tiny_model(active_memory=True)
