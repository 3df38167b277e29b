"""Metadata schema (SQLAlchemy) and the engine/unit-of-work factory; no business rules."""
