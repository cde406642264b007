"""Fixtures of the application tests, shared with the data tests (a small generated folder dataset)."""

from tests.data.conftest import folder_root  # noqa: F401  (a fixture, used by name)
