"""CLI command groups; each module registers its commands on ``kedit.cli.app``."""
