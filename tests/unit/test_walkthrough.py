"""The README walk-through's reading of the README (scripts/walkthrough.py): every command in it has a
decision, continuation lines are one command, and fixed ports move to the walk-through's own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import walkthrough  # noqa: E402


def test_every_readme_command_has_a_decision_and_every_skip_a_reason():
    blocks = walkthrough.bash_blocks((ROOT / "README.md").read_text())
    walkthrough.check_rules(blocks)  # raises, naming the command, for one no rule covers
    commands = [command for block in blocks for command in block]
    assert any(command.text == "make demo" for command in commands)
    for block in blocks:
        for command in block:
            if walkthrough.block_skip(block):
                continue
            rule = walkthrough.rule_for(command)
            assert rule.action != walkthrough.SKIP or len(rule.reason) > 20, command
            assert rule.action != walkthrough.BACKGROUND or rule.ready.startswith("http://127.0.0.1:{")


def test_the_readme_runs_its_first_steps_and_skips_only_what_needs_time_or_services():
    blocks = walkthrough.bash_blocks((ROOT / "README.md").read_text())
    actions = {
        command.text.split("  #")[0].strip(): walkthrough.SKIP
        if walkthrough.block_skip(block)
        else walkthrough.rule_for(command).action
        for block in blocks
        for command in block
    }
    assert actions["make demo"] == walkthrough.RUN
    assert actions["make serve"] == walkthrough.BACKGROUND
    assert actions[".venv/bin/rag eval"] == walkthrough.RUN
    assert actions[".venv/bin/rag partitions"] == walkthrough.RUN


def test_a_command_without_a_rule_stops_the_walkthrough_naming_it():
    [[command]] = walkthrough.bash_blocks("intro\n```bash\nrm -rf /tmp/somewhere\n```\n")
    with pytest.raises(walkthrough.WalkthroughFailure, match=r"README line 3: no rule for `rm -rf /tmp/somewhere`"):
        walkthrough.check_rules([[command]])


def test_continuation_lines_are_one_command_and_comment_lines_are_dropped():
    readme = "```bash\n# a comment\nmake demo   # trailing\ncurl -s a \\\n     -d '{}'\n\n```\n```yaml\nx: 1\n```\n"
    [block] = walkthrough.bash_blocks(readme)
    assert [(command.line, command.text) for command in block] == [
        (3, "make demo   # trailing"),
        (4, "curl -s a       -d '{}'"),
    ]


def test_fixed_addresses_move_to_the_walkthroughs_ports():
    ports = {"API_PORT": 18000, "DAGSTER_PORT": 13000, "MLFLOW_PORT": 15000, "MILVUS_PORT": 29530}
    text = "curl localhost:8000/v1/query http://127.0.0.1:3000/x 127.0.0.1:30001 localhost:5000"
    assert walkthrough.localised(text, ports) == (
        "curl localhost:18000/v1/query http://127.0.0.1:13000/x 127.0.0.1:30001 localhost:15000"
    )
    assert walkthrough._with_options("mlflow ui --x y   # note", " --port 1") == "mlflow ui --x y   --port 1 # note"
