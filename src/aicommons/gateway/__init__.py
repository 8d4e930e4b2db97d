"""The model gateway: an OpenAI-compatible proxy in front of every model server, with per-person
keys, budgets that hold (reserve, then settle) and usage kept in PostgreSQL."""
