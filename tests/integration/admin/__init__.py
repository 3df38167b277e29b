"""Admin API (/api/v1) and admin CLI tests."""
