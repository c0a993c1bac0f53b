"""README.md as a new user meets it: it stands alone, its examples are the real ones, and its
first command and its walk-through work from a fresh clone, twice.

The walk-through's commands are read from the README itself, so the two cannot drift: under
the walk-through heading every ```sh block is a step, and the ```text block after it is what
the step prints (`…` stands for anything within a line). An HTML comment a reader does not
see marks the two special steps: `<!-- walk-through: relay -->` starts relay, and
`<!-- walk-through: background -->` runs in a terminal of its own while the next steps run.
The one liberty taken: the README's port 8000 becomes a free port, so the test never meets
another relay (or a demo) on this machine.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from relay.settings import load_settings
from tests.support import free_port

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?:<!-- walk-through: (?P<role>\w+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```",
                   re.S)
DEMO_SUFFIX = " && .venv/bin/relay demo"


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def first_commands(text: str) -> tuple[str, str]:
    """The two commands the README starts with: the demo's, and the tests'."""
    block = FENCE.search(text)
    assert block and block["lang"] == "sh", "the README starts with a ```sh block"
    demo, tests = block["body"].strip().splitlines()
    return demo, tests


# -- the README on its own -------------------------------------------------------------------

def test_the_readme_starts_with_the_two_commands_and_the_demo_needs_no_extra():
    demo, tests = first_commands(README)
    assert README.startswith("# relay\n\n```sh\n")
    assert demo == "python3 -m venv .venv && .venv/bin/pip install -q -e ." + DEMO_SUFFIX
    assert "[dev]" in tests and tests.endswith(".venv/bin/python -m pytest")


def test_ci_runs_the_readmes_test_command():
    _, tests = first_commands(README)
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize("name", ["README.md", "deploy/README.md"])
def test_the_readmes_point_nowhere_a_cloner_cannot_follow(name):
    path = ROOT / name
    text = path.read_text()
    assert "CONTRACT" not in text and "shared/" not in text
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", outside_code) + re.findall(r"<(https?://[^>]+)>",
                                                                         outside_code)
    for target in targets:
        if target.startswith("http"):
            assert target.startswith("http://127.0.0.1:8000/"), target
        else:
            assert (path.parent / target.split("#")[0]).exists(), target
    assert name != "README.md" or targets


def test_the_react_hook_shown_is_the_file_in_the_repository():
    shown = re.search(r"<!-- docs/examples/use-relay-job.js -->\n```js\n(.*?)```", README, re.S)
    assert shown, "the README shows the hook under a <!-- docs/examples/use-relay-job.js --> mark"
    assert shown[1] == (ROOT / "docs" / "examples" / "use-relay-job.js").read_text()


def test_the_python_examples_are_python():
    blocks = [m["body"] for m in FENCE.finditer(README) if m["lang"] == "python"]
    assert len(blocks) == 2
    for block in blocks:
        ast.parse(block)


def test_the_configuration_example_is_a_valid_configuration(tmp_path):
    example, = [m["body"] for m in FENCE.finditer(README) if m["lang"] == "toml"]
    path = tmp_path / "relay.toml"
    path.write_text(example)
    names = set(re.findall(r"\$\{(\w+)\}", example))
    settings = load_settings(path, {name: f"{name.lower()}-value-long-enough" for name in names})
    assert set(settings.providers) == {"lipsync", "stories"}
    assert len(settings.subscriptions) == 1


# -- the walk-through, from a fresh clone ----------------------------------------------------

@dataclass(frozen=True)
class Step:
    role: str  # "relay", "background" or "step"
    command: str
    answer: str | None


def walk_through(text: str) -> list[Step]:
    steps: list[Step] = []
    for block in FENCE.finditer(section(text, "Walk-through")):
        if block["lang"] == "sh":
            steps.append(Step(block["role"] or "step", block["body"], None))
        elif block["lang"] == "text" and steps and steps[-1].answer is None:
            steps[-1] = Step(steps[-1].role, steps[-1].command, block["body"])
    return steps


def on_port(text: str, port: int) -> str:
    return text.replace("localhost:8000", f"localhost:{port}").replace(
        "127.0.0.1:8000", f"127.0.0.1:{port}")


def assert_answer(printed: str, documented: str, what: str) -> None:
    """`printed` is `documented`, line by line, where `…` matches anything within a line."""
    got = printed.rstrip().splitlines()
    expected = documented.rstrip().splitlines()
    patterns = [re.compile(".*?".join(map(re.escape, line.split("…")))) for line in expected]
    assert len(got) == len(expected) and all(
        pattern.fullmatch(line) for pattern, line in zip(patterns, got, strict=True)), (
        f"{what} printed:\n{printed}\nthe README says:\n{documented}")


def bash(command: str, clone: Path, **options) -> subprocess.Popen[str]:
    return subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + command], cwd=clone,
                            text=True, **options)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the process group `process` leads, then wait until all of it is gone."""
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(15)

    def gone() -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, 15, "relay to stop")


def answers_ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class WalkThrough:
    """One run of the README's walk-through in `clone`, on `port`."""

    def __init__(self, clone: Path, port: int, log: Path) -> None:
        self.clone = clone
        self.port = port
        self.log = log
        self.background: list[tuple[Step, subprocess.Popen[str], Path]] = []

    def run(self, steps: list[Step]) -> None:
        relay, *rest = steps
        assert relay.role == "relay", "the walk-through starts relay first"
        server = self.start_relay(relay)
        try:
            for number, step in enumerate(rest, 1):
                self.run_step(number, step)
            self.finish_background()
        finally:
            stop_group(server)

    def start_relay(self, step: Step) -> subprocess.Popen[str]:
        with self.log.open("a") as log:
            server = bash(step.command, self.clone, stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, "RELAY_PORT": str(self.port)},
                          start_new_session=True)
        wait_until(lambda: server.poll() is not None or answers_ready(self.port), 30,
                   "relay to answer")
        assert server.poll() is None, self.log.read_text()[-2000:]
        return server

    def run_step(self, number: int, step: Step) -> None:
        assert step.answer is not None, f"step {number} shows no answer"
        command = on_port(step.command, self.port)
        if step.role == "background":
            out = self.log.with_suffix(f".{number}.out")
            with out.open("w") as file:
                process = bash(command, self.clone, stdout=file, stderr=subprocess.STDOUT)
            self.background.append((step, process, out))
            # Going on before the stream has its first event would change what it shows.
            wait_until(lambda: "\ndata: " in out.read_text() and out.read_text().endswith(
                "\n\n"), 15, f"step {number}'s stream to start")
            return
        done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + command], cwd=self.clone,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"step {number}: {done.stdout}{done.stderr}"
        assert_answer(done.stdout, on_port(step.answer, self.port), f"step {number}")

    def finish_background(self) -> None:
        for step, process, out in self.background:
            process.wait(15)
            assert step.answer is not None
            assert_answer(out.read_text(), on_port(step.answer, self.port), "the stream")


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clone of this repository, with the working tree's uncommitted changes to tracked
    files applied (so what is tested is what the next commit holds), set up with the
    README's first command up to the demo: a venv and the package alone, no extra."""
    for tool in ("git", "curl", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the walk-through needs {tool}, and this machine has none")
    target = tmp_path_factory.mktemp("fresh") / "relay"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True, timeout=60)
    changes = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=ROOT, check=True,
                             capture_output=True, timeout=60).stdout
    if changes:
        subprocess.run(["git", "apply"], cwd=target, input=changes, check=True, timeout=60)
    demo, _ = first_commands((target / "README.md").read_text())
    install = bash(demo.removesuffix(DEMO_SUFFIX), target, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)
    out, _ = install.communicate(timeout=400)
    assert install.returncode == 0, out
    return target


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_first_command_runs_the_demo_with_the_package_alone(clone):
    without = subprocess.run([".venv/bin/python", "-c", "import pytest"], cwd=clone,
                             capture_output=True, timeout=30)
    assert without.returncode != 0, "the base install has the development tools in it"
    demo = subprocess.run(
        [".venv/bin/relay", "demo", "--jobs", "3", "--exit-after", "60"], cwd=clone,
        capture_output=True, text=True, timeout=90,
        env={**os.environ, "RELAY_PORT": str(free_port()), "PORT": ""})
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.splitlines()[-1].startswith("relay demo: done: 3 jobs: ")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_walk_through_works_as_written_and_again(clone, tmp_path):
    steps = walk_through((clone / "README.md").read_text())
    assert [step.role for step in steps].count("relay") == 1
    assert len(steps) >= 8
    for attempt in (1, 2):  # each run starts relay as the README says, on its own store
        WalkThrough(clone, free_port(), tmp_path / f"run{attempt}.log").run(steps)


def test_this_test_reads_steps_and_answers_from_the_readme():
    steps = walk_through(README)
    assert steps[0].role == "relay" and steps[0].answer is None
    assert all(step.answer for step in steps[1:])
    assert [step.role for step in steps].count("background") == 1
