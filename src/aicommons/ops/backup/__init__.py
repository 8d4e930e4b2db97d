"""Backups that restore: run, list, verify, restore (see docs/operations.md)."""
