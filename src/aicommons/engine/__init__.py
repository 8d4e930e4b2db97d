"""The apply engine: plan against reality, then carry the plan out safely (see docs/engine.md)."""
