"""Test helpers for the server (re-exported from the package so benchmarks use the same ones)."""
from args_engine.integrations.server_thread import ServerThread, free_port  # noqa: F401
