"""The release as data: the typed spec, the platform policy, the onboarding record, registered versions, status."""

__all__: list[str] = []
