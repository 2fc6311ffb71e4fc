"""``kpimon demo`` in a real terminal (tmux), as a new user runs it: the live view fills in, the
injected CTR drop's alert appears, and no framework log line reaches the screen."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.worker import free_port

ROOT = Path(__file__).resolve().parents[2]

#: What a library's log line on the screen looks like: Python logging's and mode's formats, and
#: the warnings the frameworks are known for.
FRAMEWORK_NOISE = re.compile(
    r"\d\d:\d\d:\d\d,\d{3} (WARNING|ERROR|INFO)|\[(WARNING|ERROR|INFO)\]|Timer \w+ is overlapping|"
    r"blocking the event loop|Idempotence will be disabled|aiokafka|faust\.|Traceback")


def _pane(session: str, history: bool = False) -> str:
    args = ["tmux", "capture-pane", "-t", session, "-p"] + (["-S", "-5000"] if history else [])
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def test_the_demo_shows_the_live_view_and_the_alert_without_framework_warnings(kafka_bootstrap: str) -> None:
    tmux = shutil.which("tmux")
    assert tmux, "tmux is installed by scripts/bootstrap.sh"
    session = f"kpimon-demo-test-{uuid.uuid4().hex[:6]}"
    app = f"kpimon-demo-test-{uuid.uuid4().hex[:6]}"
    # The terminal's own size, not one inherited from the test's environment.
    command = (f"cd {ROOT} && unset LINES COLUMNS && KAFKA_BOOTSTRAP_SERVERS={kafka_bootstrap} KPIMON_APP_ID={app} "
               f".venv/bin/kpimon demo --duration 150 --port {free_port()}; sleep 60")
    # 80 columns, as a terminal opens by default.
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "80", "-y", "50", command], check=True)
    subprocess.run([tmux, "resize-window", "-t", session, "-x", "80", "-y", "50"], capture_output=True)
    try:
        deadline = time.monotonic() + 200
        screen = ""
        while time.monotonic() < deadline:
            screen = _pane(session)
            if "campaign=camp-003" in screen and re.search(r"camp-003 .*FIRING ctr", screen):
                break
            time.sleep(2)
        else:
            print(screen)  # pytest shortens long assertion messages; the screen is in the captured output
            raise AssertionError("no alert for camp-003 on screen after 200 s (the last screen is printed above)")
        assert "latest closed 30s window per campaign" in screen
        assert "ctr" in screen.split("alerts (as sent to Slack)")[1].split("latest closed")[0], screen
        rows = [line for line in screen.splitlines() if re.search(r"camp-0\d\d +\d\d:\d\d:\d\d +\d+\.\d\d% ", line)]
        assert len(rows) == 20, screen  # every campaign's latest window, one line each at 80 columns
        # The log file is named after the app id; the view names it relative to the project.
        log_path = ROOT / ".cache" / "demo" / f"{app}.log"
        shown = str(log_path.relative_to(ROOT))
        assert f"logs: {shown}" in screen, screen
        subprocess.run([tmux, "send-keys", "-t", session, "C-c"], check=True)
        deadline = time.monotonic() + 60
        while f"demo stopped; logs: {shown}" not in _pane(session, history=True) and time.monotonic() < deadline:
            time.sleep(1)
        everything = _pane(session, history=True)
        assert f"demo stopped; logs: {shown}" in everything, everything[-3000:]  # stopped cleanly, and said where the logs are
        noise = [line for line in everything.splitlines() if FRAMEWORK_NOISE.search(line)]
        assert not noise, noise
        assert log_path.exists() and f"kpimon worker {app}" in log_path.read_text(errors="replace")
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True)
