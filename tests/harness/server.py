"""Start the real ComfyUI server (main.py) as a child process for a test, and always stop it."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

log = logging.getLogger("harness.server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 30.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def stop_process_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers; safe to call when already gone."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace_s)


def log_tail(path: str, chars: int = 4000) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-chars:]


@dataclass(frozen=True)
class ServerHandle:
    url: str  # http://127.0.0.1:PORT
    pid: int  # ComfyUI's main.py itself (the process group leader), for memory readings
    base_dir: str
    log_path: str


@contextlib.contextmanager
def comfyui_server(base_dir: str, log_path: str, port: int | None = None, timeout_s: float = 240.0, extra_args=()):
    """Yield a ServerHandle for a ComfyUI server on 127.0.0.1 with base_dir; stopped in every outcome.

    Ready means GET /system_stats answers, which ComfyUI serves only after every node (ours included)
    has been loaded.
    """
    from hrv.comfy_host import comfyui_dir
    root = comfyui_dir()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, os.path.join(root, "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", base_dir, "--database-url", f"sqlite:///{os.path.join(base_dir, 'user', 'comfyui.db')}",
           *extra_args]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {proc.returncode} before serving:\n{log_tail(log_path)}")
            try:
                get_json(url + "/system_stats", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"ComfyUI did not answer on {url} within {timeout_s:.0f} s:\n{log_tail(log_path)}")
            time.sleep(0.5)
        log.info("ComfyUI serving on %s (pid %d)", url, proc.pid)
        yield ServerHandle(url=url, pid=proc.pid, base_dir=os.path.abspath(base_dir), log_path=log_path)
    finally:
        stop_process_group(proc)


@contextlib.contextmanager
def running_server(base_dir: str, log_path: str, port: int | None = None, timeout_s: float = 240.0, extra_args=()):
    """comfyui_server() yielding only the URL."""
    with comfyui_server(base_dir, log_path, port, timeout_s, extra_args) as server:
        yield server.url
