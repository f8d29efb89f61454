"""The README is the front door: every setting has its row, every command is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hfqueue.cli.parser import build_parser as _parser
from hfqueue.core.config import Settings

pytestmark = pytest.mark.timeout(30)
README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_has_one_row_with_its_default() -> None:
    # given the configuration table rows of the README
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(HFQ_[A-Z_]+)` \| `?([^`|]*?)`? \|", README, re.M)}

    # then each setting has exactly one row, showing its real default, and no row names a missing setting
    expected = {f"HFQ_{name.upper()}": field.default for name, field in Settings.model_fields.items()}
    assert set(rows) == set(expected)
    for var, default in expected.items():
        shown = ("unset" if default is None else str(default).lower() if isinstance(default, bool)
                 else json.dumps([str(v) for v in default]) if isinstance(default, list) else str(default))
        assert rows[var] == shown, var


def test_every_hfq_command_is_documented() -> None:
    # given the commands the CLI defines
    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]

    # then each appears in the README's command table
    for name in commands:
        assert f"`hfq {name}" in README, name


def test_every_task_has_a_row_with_its_aliases_and_output_columns() -> None:
    # given the task registry, with default options for the tasks that need none
    from hfqueue import tasks

    table = README[README.index("### Tasks and their output columns"):README.index("Generation options (all")]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| `")}
    for name in tasks.names():
        adapter = tasks.get(name)
        # then each task has a row naming it, its aliases and every output column
        row = next((line for key, line in rows.items() if key.startswith(f"`{name}`")), None)
        assert row is not None, name
        assert all(f"`{alias}`" in row for alias in adapter.aliases), name
        defaults = {"candidate_labels": ["a"]} if name == "zero-shot-classification" else {}
        columns = adapter.output_types(adapter.validate_options(defaults))
        assert all(f"`{col}`" in row for col in columns) or "as text-classification" in row, name
