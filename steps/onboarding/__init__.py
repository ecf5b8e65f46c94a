"""Onboarding libraries: model sources, weight checks, hashing, eval dataset validation."""

__all__: list[str] = []
