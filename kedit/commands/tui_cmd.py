"""Commands registered on ``kedit.cli.app`` (filled in by its issue)."""
