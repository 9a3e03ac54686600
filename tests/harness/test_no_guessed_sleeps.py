"""kvtest's own tests wait for a state (``waits.wait_until``), they do not sleep a guessed time for it.

A ``time.sleep`` of half a second or more in harness code (scripts the tests write for their roles are
strings, and not looked at) is a guess that a state has been reached: on a loaded 2-core machine it
is sometimes not, and the test flakes. The few sleeps that ARE the scenario are listed with why.
"""

from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parent
GUESS_S = 0.5

# file -> the sleeps in it that are the scenario itself, not a wait for a state
SCENARIO = {
    "test_two_hosts.py": {
        1.0: "the cut lands after d0 has noted p0's step 'push' (its store waits are 0.2 s slices): "
        "the step named in d0's partition message is what the test checks",
    },
}


def guessed_sleeps(path: Path) -> list[tuple[int, float]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "sleep"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "time"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, (int, float))
            and node.args[0].value >= GUESS_S
        ):
            found.append((node.lineno, float(node.args[0].value)))
    return found


def test_the_harness_waits_for_states_instead_of_sleeping() -> None:
    offenders = []
    for path in sorted(HARNESS.rglob("*.py")):
        allowed = SCENARIO.get(path.name, {})
        for line, seconds in guessed_sleeps(path):
            if seconds not in allowed:
                offenders.append(f"{path.relative_to(HARNESS)}:{line}: time.sleep({seconds:g})")
    assert not offenders, (
        "sleeps that guess a state is reached (use waits.wait_until with the state): " + ", ".join(offenders)
    )


def test_the_check_finds_a_guessed_sleep(tmp_path: Path) -> None:
    script = tmp_path / "test_example.py"
    script.write_text(
        "import time\n"
        "ROLE = 'time.sleep(5)'  # a role's script, a string: not harness code\n"
        "def test_x():\n"
        "    time.sleep(0.05)\n"
        "    time.sleep(3)\n"
    )
    assert guessed_sleeps(script) == [(5, 3.0)]
