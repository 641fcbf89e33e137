"""``kedit tui`` is registered on the CLI, and textual is imported only when it runs."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from kedit.cli import app


def test_tui_command_is_registered_with_its_options():
    result = CliRunner().invoke(app, ["tui", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--model", "--method", "--layers", "--device", "--dtype", "--query-quant", "--load"):
        assert option in result.output


def test_the_cli_does_not_import_textual_until_the_tui_runs():
    code = "import sys, kedit.cli; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_layers_option_is_parsed_and_bad_layers_are_a_usage_error():
    import pytest

    from kedit.choices import parse_layers
    from kedit.errors import UsageError

    assert parse_layers("4") == (4,)
    assert parse_layers("4,5, 6") == (4, 5, 6)
    assert parse_layers(None) is None
    with pytest.raises(UsageError):
        parse_layers("four")
