"""The `llmrelease` command line: one module per command group, `main` in `workflows.cli.main`."""

__all__: list[str] = []
