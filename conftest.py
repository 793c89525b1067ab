"""pytest's entry point: the shared fixtures live in tests/fixtures.py."""

pytest_plugins = ["tests.fixtures"]
