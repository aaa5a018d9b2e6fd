"""The runner's rules (reelflow/runner_rules.py): which commands go to a runner, which environment keys one, where
its socket lives, and that the launcher itself imports the standard library only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from reelflow import runner_rules as rules

REPO = Path(__file__).resolve().parents[2]
names = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ_"), min_size=1, max_size=12)
values = st.text(max_size=20)
key_names = st.builds(
    lambda p, n: p + n, st.sampled_from(["PREFECT_", "REELFLOW_", "AWS_"]), names
).filter(lambda n: n not in rules.NOT_KEY_NAMES)
other_names = names.filter(lambda n: not rules.is_key_var(n))


def test_only_the_short_lived_commands_go_to_the_runner() -> None:
    """ingest/publish/status/media are served; servers, the runner's own commands, a leading
    option and an empty argv stay in process."""
    for argv in (["ingest", "x.mp4"], ["publish", "m_1"], ["status"], ["media", "list"]):
        assert rules.runner_command(argv) == argv[0]
    for argv in (
        [],
        ["--help"],
        ["--install-completion"],
        ["gateway", "serve"],
        ["serve"],
        ["runner", "status"],
        ["sample"],
        ["s3-events"],
        ["--verbose", "ingest"],
    ):
        assert rules.runner_command(argv) is None


@given(st.dictionaries(key_names, values), st.dictionaries(other_names, values))
def test_the_key_ignores_other_variables_and_order(
    keyed: dict[str, str], other: dict[str, str]
) -> None:
    """Only PREFECT_*/REELFLOW_*/AWS_*, HOME, PATH, PYTHONPATH key a runner, in any order."""
    cwd = Path("/nonexistent")
    plain = rules.env_key(keyed, "/venv", cwd)
    mixed = dict(reversed(list((keyed | other).items())))
    assert rules.env_key(mixed, "/venv", cwd) == plain


@given(st.dictionaries(key_names, values), key_names, values)
def test_any_key_variable_changes_the_key(keyed: dict[str, str], name: str, value: str) -> None:
    """Changing, adding or removing one keyed variable gives another runner."""
    cwd = Path("/nonexistent")
    changed = keyed | {name: value}
    if rules.CLI_DEFAULTS | changed != rules.CLI_DEFAULTS | keyed:
        assert rules.env_key(changed, "/venv", cwd) != rules.env_key(keyed, "/venv", cwd)


def test_the_interpreter_and_the_settings_files_are_part_of_the_key(tmp_path: Path) -> None:
    """Another venv, or a prefect.toml/.env/profile Prefect would read, is another runner."""
    env = {"HOME": str(tmp_path), "PATH": "/bin"}
    base = rules.env_key(env, "/venv", tmp_path)
    assert rules.env_key(env, "/other-venv", tmp_path) != base
    (tmp_path / "prefect.toml").write_text('[api]\nurl = "http://127.0.0.1:1/api"\n')
    assert rules.env_key(env, "/venv", tmp_path) != base
    profiles = tmp_path / ".prefect" / "profiles.toml"
    profiles.parent.mkdir()
    profiles.write_text('active = "x"\n[profiles.x]\nPREFECT_API_URL = "http://127.0.0.1:2/api"\n')
    assert rules.configured_api_url(env, tmp_path) == "http://127.0.0.1:2/api"


def test_the_key_does_not_change_once_the_cli_set_its_defaults() -> None:
    """rules.CLI_DEFAULTS is what reelflow.cli sets at import, so `reelflow runner status`
    (which imports the CLI) finds its caller's runner."""
    source = (REPO / "reelflow" / "cli.py").read_text()
    found = dict(re.findall(r'os\.environ\.setdefault\("([A-Z_]+)", "([^"]*)"\)', source))
    assert found == rules.CLI_DEFAULTS
    env = {"PATH": "/bin"}
    cwd = Path("/nonexistent")
    assert rules.env_key(env | found, "/v", cwd) == rules.env_key(env, "/v", cwd)


def test_secrets_are_only_hashed() -> None:
    """A secret's value is in no path the runner writes (the socket, lock, log, state)."""
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "XDG_RUNTIME_DIR": "/run/user/1"}
    path = rules.socket_path(env, "/venv")
    assert "s3cr3t" not in str(path)
    assert re.fullmatch(r"/run/user/1/reelflow/runner-[0-9a-f]{16}\.sock", str(path))


def test_without_xdg_the_socket_is_in_a_per_user_tmp_dir() -> None:
    import os

    assert rules.socket_dir({}) == Path(f"/tmp/reelflow-{os.getuid()}")


def test_the_runner_is_on_unless_turned_off() -> None:
    assert rules.wanted({})
    assert rules.wanted({"REELFLOW_RUNNER": "on"})
    for off in ("off", "OFF", "0", "false", "no"):
        assert not rules.wanted({"REELFLOW_RUNNER": off})


def test_a_directory_others_can_enter_is_refused(tmp_path: Path) -> None:
    """The socket dir must be 0700 and ours: a group- or world-accessible one is not used."""
    good = tmp_path / "good"
    assert rules.secure_dir(good)
    bad = tmp_path / "bad"
    bad.mkdir(mode=0o755)
    bad.chmod(0o755)
    assert not rules.secure_dir(bad)


def test_the_launcher_imports_the_standard_library_only() -> None:
    """No third-party module, and no other reelflow module, is loaded by the launcher."""
    code = (
        "import sys; before = set(sys.modules); import reelflow.launch; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    loaded = done.stdout.split()
    assert "reelflow.launch" in loaded
    stdlib = sys.stdlib_module_names
    foreign = [m for m in loaded if m.split(".")[0] not in stdlib and m != "reelflow.launch"]
    assert set(foreign) <= {"reelflow", "reelflow.runner_rules"}, foreign
