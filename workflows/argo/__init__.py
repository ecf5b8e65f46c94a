"""Argo manifests: render, lint, the one expression and `depends` parser, manifest loading."""

__all__: list[str] = []
