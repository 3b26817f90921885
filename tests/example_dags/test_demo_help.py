"""``scripts/demo.py --help`` describes every option the demo takes."""

from __future__ import annotations

import argparse
import subprocess
import sys

from example_dag_support import SCRIPTS, demo


def test_help_describes_every_option_and_its_default() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS / "demo.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    text = " ".join(completed.stdout.split())  # argparse wraps lines
    options = [action for action in demo.build_parser()._actions if action.option_strings]
    assert {o.option_strings[-1] for o in options} >= {"--customers", "--workdir", "--report-json"}
    for option in options:
        assert option.help and option.help != argparse.SUPPRESS, f"{option.option_strings} has no help"
        assert option.option_strings[-1] in text
        if option.default not in (None, argparse.SUPPRESS):
            assert f"(default: {option.default})" in text, (
                f"{option.option_strings} does not show its default"
            )
    assert "5% leave, 5% arrive and 2.5% change e-mail" in text  # from DemoSettings, formatted
