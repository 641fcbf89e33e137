"""``python -m kedit``: the same as the ``kedit`` command."""

from kedit.cli import main

main()
