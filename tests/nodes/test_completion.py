"""``migrate-node completion bash``: the script completes in a real bash what the parser parses."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from migrate.cli import COMMANDS
from nodes import cli
from nodeproc import clean_env, migrate_node_command

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> str:
    done = subprocess.run([*migrate_node_command(), "completion", "bash"], capture_output=True, text=True,
                          env=clean_env(), timeout=60, check=True)
    path = tmp_path_factory.mktemp("completion") / "migrate-node.bash"
    path.write_text(done.stdout)
    return str(path)


def complete(script: str, line: str, cwd=None) -> list[str]:
    """What bash offers for the last word of ``line`` (a trailing space starts a new, empty word)."""
    words = line.split(" ")
    program = (f"source {script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\nCOMP_CWORD={len(words) - 1}\n"
               "_migrate_node_complete\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, cwd=cwd, timeout=30,
                          check=True)
    return sorted(w for w in done.stdout.splitlines() if w)


def test_the_first_word_is_any_command(script):
    assert complete(script, "migrate-node ") == sorted([*COMMANDS, "completion"])
    assert complete(script, "migrate-node mi") == ["migrate"]


def test_nested_commands_and_their_options(script):
    assert complete(script, "migrate-node cert ") == ["issue", "revoke", "show"]
    assert "--role" in complete(script, "migrate-node cert issue --")
    assert complete(script, "migrate-node cert issue --role ") == ["client", "node"]


def test_an_options_value_is_not_taken_for_a_command(script):
    # "migrate" here is the value of --id, not the migrate command: deploy's options still complete
    assert complete(script, "migrate-node deploy --id migrate --a") == ["--app"]


def test_choices_directories_and_files(script, tmp_path):
    assert complete(script, "migrate-node migrate --strategy ") == ["precopy", "stop-copy"]
    (tmp_path / "data").mkdir()
    (tmp_path / "module.wasm").write_bytes(b"\0asm")
    assert complete(script, "migrate-node serve --data-dir ", cwd=tmp_path) == ["data"]
    assert complete(script, "migrate-node deploy ", cwd=tmp_path) == ["data", "module.wasm"]


def test_every_option_of_every_command_is_offered(script):
    parser = cli.build_parser(COMMANDS)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        options = {o for a in command._actions for o in a.option_strings}
        assert set(complete(script, f"migrate-node {name} -")) == {o for o in options if o.startswith("-")}, name


def test_only_bash_is_known():
    done = subprocess.run([*migrate_node_command(), "completion", "fish"], capture_output=True, text=True,
                          env=clean_env(), timeout=60)
    assert done.returncode != 0 and "invalid choice" in done.stderr
