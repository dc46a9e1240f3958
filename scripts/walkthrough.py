"""The README as a new user meets it: its ```bash blocks, in order, on a fresh copy of the repository,
offline. It stops at the first command that fails and names it (README line, command, exit status, the end
of its output).

    .venv/bin/python scripts/walkthrough.py [--keep DIR]

What happens to each command is decided here, in RULES: run it, start it in the background until it
answers (a server), or skip it with the reason. A command no rule covers fails the walkthrough, so a new
README command gets a decision, never silence. A whole block can be skipped by its first command
(BLOCK_SKIPS: the production profile, the benchmarks).

The copy holds the files of this checkout that a clone would (git's tracked files plus new, not ignored
ones), in a temporary folder, with no `.rag_data`, `.env` or `DAGSTER_HOME`; its code runs (PYTHONPATH).
The one step not repeated is the download: the copy's `.venv` reuses this checkout's installed environment,
so `make demo`'s `install` is already done. Servers listen on free ports picked here (the Makefile's
DAGSTER_PORT, API_PORT, … variables), and the README's `localhost:8000`-style addresses are rewritten to
them. `curl` fails on an HTTP error status (a `.curlrc` with `--fail-with-body`), so a 401 or 503 breaks the
walkthrough like a crash would. Commands of one block share one shell (`KEY=$(…)` then `curl … $KEY`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN, BACKGROUND, SKIP = "run", "background", "skip"


@dataclass(frozen=True)
class Rule:
    prefix: str  # the command as the README writes it, from its start
    action: str
    reason: str = ""  # why it is skipped
    ready: str = ""  # a background command is ready when this URL answers 2xx ({API_PORT} etc. filled in)
    append: str = ""  # added to the command (a port option the README leaves at its default)


PRODUCTION = (
    "the production profile: PostgreSQL databases, Redis and six servers on fixed ports; "
    "tests/integration/test_production_stack.py runs exactly these steps"
)
BLOCK_SKIPS = {
    "mkdir -p ~/rag-docs": PRODUCTION,
    ".venv/bin/python evals/bench_indexing.py": "benchmarks: minutes to hours each, over whole SciFact and 1M rows",
}
RULES = [
    Rule("make demo", RUN),
    Rule("make test", SKIP, "the whole suite: CI runs `make test`; this walk is `make walkthrough`"),
    Rule("make dagster", BACKGROUND, ready="http://127.0.0.1:{DAGSTER_PORT}/server_info"),
    Rule("make serve", BACKGROUND, ready="http://127.0.0.1:{API_PORT}/ready"),
    Rule("KEY=$(.venv/bin/rag-serve create-key", RUN),
    Rule("curl ", RUN),
    Rule(".venv/bin/rag-serve list-keys", RUN),
    Rule(".venv/bin/rag-serve revoke-key", RUN),
    Rule("RAG_ADMIN_KEY=$(", BACKGROUND, ready="http://127.0.0.1:{API_PORT}/ready"),
    Rule(".venv/bin/rag eval", RUN),
    Rule(
        ".venv/bin/rag finetune",
        SKIP,
        "fine-tunes on every SciFact train claim, then trains the reranker (about an hour each on 2 cores); "
        "tests/integration/test_promotion.py and test_reranker.py run the same jobs with the small preset",
    ),
    Rule(
        ".venv/bin/rag train-reranker",
        SKIP,
        "trains a cross-encoder on every SciFact train claim (~45 min on 2 cores); "
        "tests/integration/test_reranker.py runs the same job with the small preset",
    ),
    Rule(".venv/bin/rag promote --model", SKIP, "needs a version registered by `rag finetune`, skipped above"),
    Rule(
        ".venv/bin/rag promote --chunk-max-tokens",
        SKIP,
        "builds and evaluates a second full index (minutes), and exits 1 whenever the gate keeps the served "
        "build, which depends on the corpus; tests/integration/test_promotion.py covers promotion",
    ),
    Rule(".venv/bin/rag builds", RUN),
    Rule(
        ".venv/bin/rag rollback",
        SKIP,
        "needs a second promoted build (from `rag finetune` or `rag promote`, skipped above); with none it refuses "
        "in one line, exit 1, which tests/integration/test_cli.py checks",
    ),
    Rule(
        ".venv/bin/mlflow ui",
        BACKGROUND,
        ready="http://127.0.0.1:{MLFLOW_PORT}/health",
        append=" --port {MLFLOW_PORT} --workers 1",
    ),
    Rule(
        "RAG_RERANK_MODEL=models:/rag-reranker/1 make serve",
        SKIP,
        "needs a reranker registered by `rag train-reranker`, skipped above",
    ),
    Rule(
        ".venv/bin/rag experiment create",
        SKIP,
        "its arm names a candidate build (`<a candidate from rag builds>`), and a fresh install has none: "
        "`rag promote` and `rag finetune`, which make one, are skipped above",
    ),
    *(
        Rule(f".venv/bin/rag experiment {verb}", SKIP, "acts on the experiment `rag experiment create` makes, skipped")
        for verb in ("replay", "report", "pause", "resume", "stop")
    ),
    Rule(".venv/bin/rag experiment list", RUN),
    Rule(".venv/bin/rag index", RUN),
    Rule(".venv/bin/rag partitions", RUN),
    Rule("DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.rag_data/dagster} .venv/bin/dagster asset materialize", RUN),
]
# The README's fixed addresses, and the make variable that moves each.
PORTS = {"API_PORT": 8000, "DAGSTER_PORT": 3000, "MLFLOW_PORT": 5000, "MILVUS_PORT": 19530}
# A fresh clone's shell: nothing of ours configured (the walkthrough sets RAG_DATA_DIR to the copy's own).
CLEARED = re.compile(r"^(RAG_|MILVUS_|DAGSTER_|MLFLOW_|REDIS_URL$|VIRTUAL_ENV$|PYTHONPATH$)")


@dataclass(frozen=True)
class Command:
    block: int  # the ```bash block's number in the README, from 1
    line: int  # where the command starts in the README
    text: str  # continuation lines joined, as bash reads them


@dataclass
class Report:
    ran: list[Command] = field(default_factory=list)
    skipped: list[tuple[Command, str]] = field(default_factory=list)


class WalkthroughFailure(RuntimeError):
    """A README command failed, or none of RULES covers it; the message names it."""


def bash_blocks(readme: str) -> list[list[Command]]:
    """The ```bash blocks' commands: comment-only lines dropped, backslash continuations joined."""
    blocks: list[list[Command]] = []
    current: list[Command] | None = None
    pending, start = "", 0
    for number, line in enumerate(readme.splitlines(), start=1):
        if current is None:
            if line.strip() == "```bash":
                current = []
            continue
        if line.strip() == "```":
            blocks.append(current)
            current = None
            continue
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        start = start if pending else number
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            current.append(Command(len(blocks) + 1, start, pending))
            pending = ""
    return blocks


def rule_for(command: Command) -> Rule:
    matches = [rule for rule in RULES if command.text.startswith(rule.prefix)]
    if not matches:
        raise WalkthroughFailure(
            f"README line {command.line}: no rule for `{command.text}` — add one to RULES in scripts/walkthrough.py "
            "(run it, start it in the background, or skip it with the reason)"
        )
    return max(matches, key=lambda rule: len(rule.prefix))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_copy(target: Path) -> None:
    """The checkout's files as a clone of it would hold them, with their times (so make sees `install` done),
    and a `.venv` that is this checkout's environment."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = ROOT / relative
        if source.is_file():  # a deleted file is still listed until the deletion is committed
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)
    venv = target / ".venv"
    venv.mkdir()
    for entry in (ROOT / ".venv").iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()  # newer than every prerequisite just copied: `make install` is done


def environment(copy: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not CLEARED.match(key)}
    curl_home = copy / ".walkthrough" / "curl"
    curl_home.mkdir(parents=True, exist_ok=True)
    (curl_home / ".curlrc").write_text("--fail-with-body\n")
    return env | {
        "RAG_DATA_DIR": str(copy / ".rag_data"),
        "PYTHONPATH": str(copy),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CURL_HOME": str(curl_home),
        **{name: str(port) for name, port in ports.items()},
    }


def localised(text: str, ports: dict[str, int]) -> str:
    """The README's fixed addresses moved to the walkthrough's ports."""
    for name, default in PORTS.items():
        text = re.sub(rf"\b(localhost|127\.0\.0\.1):{default}\b", rf"\g<1>:{ports[name]}", text)
    return text


class Session:
    """Runs one block's commands in one shell, and its background servers until the block ends."""

    def __init__(self, copy: Path, env: dict[str, str], ports: dict[str, int], timeout_s: float) -> None:
        self.copy, self.env, self.ports, self.timeout_s = copy, env, ports, timeout_s
        self.background: list[subprocess.Popen] = []
        self.logs = copy / ".walkthrough"

    def run(self, commands: list[Command]) -> None:
        if not commands:
            return
        state = self.logs / "current"
        script = ["set -e -o pipefail"]
        for index, command in enumerate(commands):
            script += [f"echo {index} > {state}", localised(command.text, self.ports)]
        for command in commands:
            print(f"$ {command.text}", flush=True)
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=self.copy,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=self.timeout_s,
        )
        print(result.stdout, end="", flush=True)
        if result.returncode != 0:
            failed = commands[int(state.read_text())]
            tail = "\n".join(result.stdout.splitlines()[-25:])
            raise WalkthroughFailure(
                f"README line {failed.line} failed with exit status {result.returncode}: `{failed.text}`\n{tail}"
            )

    def start(self, command: Command, rule: Rule) -> None:
        text = _with_options(localised(command.text, self.ports), rule.append.format(**self.ports))
        log = self.logs / f"background-{command.line}.log"
        print(f"$ {command.text}   (in the background, until {rule.ready.format(**self.ports)} answers)", flush=True)
        with log.open("wb") as output:
            process = subprocess.Popen(
                ["bash", "-c", text],
                cwd=self.copy,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background.append(process)
        url, deadline = rule.ready.format(**self.ports), time.monotonic() + self.timeout_s
        while not _answers_every_time(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                state = f"exited with {process.returncode}" if process.poll() is not None else "never answered"
                raise WalkthroughFailure(f"README line {command.line}: `{command.text}` {state} ({url})\n{tail}")
            time.sleep(1)

    def stop(self) -> None:
        for process in reversed(self.background):
            _stop_group(process)
        self.background.clear()


def _with_options(text: str, options: str) -> str:
    """`options` added to the command, before its trailing comment if it has one."""
    comment = re.search(r"\s#\s", text)
    return text + options if comment is None else text[: comment.start()] + options + text[comment.start() :]


def _answers_every_time(url: str, times: int = 20) -> bool:
    """2xx on `times` new connections in a row: a server with several workers (`make serve` starts two, each
    warming up on its own) is ready when every worker is, not when the first one answers."""
    for _ in range(times):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if not 200 <= response.status < 300:
                    return False
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
    return True


def _stop_group(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM to the server's whole process group (make, its server, their workers), SIGKILL after a minute."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def segments(block: list[Command], report: Report) -> Iterator[tuple[list[Command], tuple[Command, Rule] | None]]:
    """The block as (commands to run in one shell, then a server to start), in README order."""
    batch: list[Command] = []
    skipped = block_skip(block)
    for command in block:
        rule = Rule("", SKIP, skipped) if skipped else rule_for(command)
        if rule.action == SKIP:
            report.skipped.append((command, rule.reason))
            print(f"# skipped: {command.text}\n#   because {rule.reason}", flush=True)
        elif rule.action == BACKGROUND:
            yield batch, (command, rule)
            report.ran += [*batch, command]
            batch = []
        else:
            batch.append(command)
    yield batch, None
    report.ran += batch


def block_skip(block: list[Command]) -> str:
    """Why the whole block is skipped, or ""."""
    first = block[0].text if block else ""
    return next((reason for prefix, reason in BLOCK_SKIPS.items() if first.startswith(prefix)), "")


def check_rules(blocks: list[list[Command]]) -> None:
    """Every command has a decision before anything runs: a command no rule covers fails at once."""
    for block in blocks:
        if not block_skip(block):
            for command in block:
                rule_for(command)


def walk(readme: Path, copy: Path, timeout_s: float) -> Report:
    ports = {name: free_port() for name in PORTS}
    env = environment(copy, ports)
    report = Report()
    blocks = bash_blocks(readme.read_text())
    check_rules(blocks)
    for block in blocks:
        session = Session(copy, env, ports, timeout_s)
        try:
            for commands, server in segments(block, report):
                session.run(commands)
                if server:
                    session.start(*server)
        finally:
            session.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--keep", type=Path, help="make the copy here and keep it (default: a temporary folder)")
    parser.add_argument("--timeout-s", type=float, default=1800, help="per block of commands, and per server start")
    args = parser.parse_args(argv)
    copy = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="rag-walkthrough-"))
    copy.mkdir(parents=True, exist_ok=True)
    try:
        fresh_copy(copy)
        report = walk(args.readme, copy, args.timeout_s)
    except WalkthroughFailure as failure:
        print(f"\nWALKTHROUGH FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(copy, ignore_errors=True)
    print(f"\nwalkthrough passed: {len(report.ran)} README commands ran, {len(report.skipped)} skipped:")
    for command, reason in report.skipped:
        print(f"  - line {command.line}: {command.text[:90]}\n      {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
