"""The benchmarks' own machinery: what bench/e2e.py feeds the contenders, how bench/_measure.py
counts a contender's CPU, and that bench/_netns.py's namespace goes away. No speed is asserted
here (the benchmarks measure it); these check that what they report is counted at all."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from bench import _netns as netns
from bench._measure import living_marked, run_measured, stop_marked
from bench.e2e import fresh_clip, parse_size, size_label
from reelflow.samples import make_clip

REPO = Path(__file__).resolve().parents[2]
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"


def test_sizes_parse_in_decimal_and_binary_units() -> None:
    """8MB is 8 000 000 bytes, 512MiB and 1GiB binary, and a bare number is bytes."""
    assert parse_size("8MB") == 8_000_000
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1GiB") == 2**30
    assert parse_size("12345") == 12345
    assert size_label(8_000_000) == "8MB" and size_label(2**30) == "1GiB"
    with pytest.raises(Exception, match="not a size"):
        parse_size("8 furlongs")


def test_each_rounds_clip_is_new_content_and_still_a_video(tmp_path: Path) -> None:
    """Two rounds' copies differ from the base and each other (no SHA-256 dedup), and ffprobe
    still reads each as the same H.264 video."""
    base = make_clip(tmp_path / "base.mp4", duration_s=1.0, width=160, height=288, audio=False)
    a, b = fresh_clip(base, tmp_path / "rounds"), fresh_clip(base, tmp_path / "rounds")
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (base, a, b)}
    assert len(digests) == 3
    assert a.stat().st_size == base.stat().st_size + 40
    for clip in (a, b):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0",
             str(clip)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert probe.stdout.strip() == "h264"


def test_cpu_of_a_reaped_child_counts_as_the_contenders(tmp_path: Path) -> None:
    """A contender whose work happens in a child it waits for is charged that child's CPU."""
    code = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {BURN!r}])\n"
    m = run_measured(
        [sys.executable, "-c", code], dict(os.environ), tag=f"t-{uuid.uuid4().hex}",
        cwd=tmp_path, timeout_s=60,
    )  # fmt: skip
    assert m.returncode == 0
    assert m.cpu_s >= 0.35
    assert m.helpers_cpu_s == 0


@pytest.mark.parametrize("work_in", ["helper", "helpers_worker"])
def test_cpu_of_a_helper_left_running_is_counted_and_the_helper_ended(
    tmp_path: Path, work_in: str
) -> None:
    """A helper the contender starts and does not wait for (a warm runner's daemon) is charged
    to the contender, also for the work of a worker it forks and reaps itself, and
    stop_marked ends it by pid."""
    tag = f"t-{uuid.uuid4().hex}"
    ready = tmp_path / "ready"
    work = BURN
    if work_in == "helpers_worker":
        work = f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {BURN!r}])\n"
    helper = work + f"open({str(ready)!r}, 'w').close()\ntime.sleep(120)\n"
    code = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, '-c', {helper!r}], start_new_session=True)
        for _ in range(200):
            if os.path.exists({str(ready)!r}):
                break
            time.sleep(0.05)
        """
    )
    m = run_measured(
        [sys.executable, "-c", code], dict(os.environ), tag=tag, cwd=tmp_path, timeout_s=60
    )
    try:
        assert ready.exists()
        assert m.helpers_cpu_s >= 0.35
        assert m.cpu_s >= m.helpers_cpu_s
        assert len(living_marked(tag)) == 1
    finally:
        assert stop_marked(tag) == 1
    assert living_marked(tag) == {}


def test_link_mode_without_root_says_why_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--link on a machine where it cannot work exits non-zero with the reason, making nothing."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert netns.rerun_inside(100, "bench._netns", ["--verify", "100"]) == 2
    assert "needs root" in capsys.readouterr().err


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")),
    reason="needs root, ip and tc",
)
def test_namespace_is_limited_and_deleted_with_what_ran_inside() -> None:
    """The namespace carries a tbf qdisc at the asked rate; delete() ends a process still
    inside and removes the namespace."""
    ns = netns.Namespace(100)
    proc = subprocess.Popen(ns.wrap(["sleep", "60"]))
    try:
        assert "tbf" in ns.qdisc() and "100Mbit" in ns.qdisc()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert ns.name in listed
    finally:
        ns.delete()
    assert proc.wait(timeout=15) != 0  # ended by delete(), not by its own end
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name not in listed
