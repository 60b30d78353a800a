"""Numbered, idempotent schema migrations, shipped in the package as ``collector.sql``."""
