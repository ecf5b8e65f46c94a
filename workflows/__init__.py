"""Hera pipeline definitions, rendering, offline lint, the local runner and the CLI."""

__all__: list[str] = []
