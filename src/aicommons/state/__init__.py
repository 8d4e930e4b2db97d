"""State: allocations, encrypted secrets, what was applied, runs, journal and the apply lock."""

from aicommons.state.store import StateError, StateStore, default_path

__all__ = ["StateError", "StateStore", "default_path"]
