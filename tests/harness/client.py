"""Talk to a running ComfyUI server over HTTP and its websocket, as the web page does.

    client = ComfyClient("http://127.0.0.1:8188")
    result = client.run(prompt)          # POST /prompt, wait on /ws, then read /history/<id>

Every wait is bounded; nothing here retries a prompt. Used by the end-to-end tests and scripts.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field

log = logging.getLogger("harness.client")

FINISHED = ("execution_success", "execution_error", "execution_interrupted")


class PromptRejected(RuntimeError):
    """ComfyUI refused the prompt at validation (HTTP 400); .body is its JSON answer."""

    def __init__(self, body: dict):
        self.body = body
        error = body.get("error", {})
        lines = [f"{error.get('message', 'prompt rejected')}: {error.get('details', '')}".rstrip(": ")]
        for node_id, info in (body.get("node_errors") or {}).items():
            for e in info.get("errors", []):
                lines.append(f"  node #{node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
        super().__init__("\n".join(lines))


@dataclass
class PromptResult:
    prompt_id: str
    status: str  # "success" or "error" (ComfyUI's history status_str)
    outputs: dict  # node id -> UI output, as in /history
    messages: list = field(default_factory=list)  # (event, data) pairs from the history entry
    seconds: float = 0.0

    @property
    def error(self) -> dict | None:
        """The execution_error message (node_id, node_type, exception_type, exception_message, traceback)."""
        for event, data in self.messages:
            if event == "execution_error":
                return data
        return None

    def images(self) -> list[dict]:
        """Every {filename, subfolder, type} the prompt's output nodes reported."""
        return [image for ui in self.outputs.values() for image in (ui.get("images") or [])]


class ComfyClient:
    def __init__(self, url: str, request_timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self.client_id = uuid.uuid4().hex

    # --- plain HTTP ---------------------------------------------------------------------------

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=self.request_timeout_s) as response:
            return response.read()

    def get_json(self, path: str):
        return json.loads(self.get_bytes(path).decode("utf-8"))

    def post_json(self, path: str, data: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(data).encode("utf-8"),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout_s) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", errors="replace")
            try:
                parsed = json.loads(body)
            except json.JSONDecodeError:
                raise RuntimeError(f"POST {path}: HTTP {e.code}: {body[:2000]}") from None
            raise PromptRejected(parsed) from None

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(self, prompt: dict) -> str:
        """POST /prompt; returns the prompt id. Raises PromptRejected when validation fails."""
        answer = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def view(self, image: dict) -> bytes:
        """The bytes of an output image as the web page fetches it (GET /view)."""
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.get_bytes("/view?" + query)

    def image_path(self, base_dir: str, image: dict) -> str:
        folder = {"output": "output", "temp": "temp", "input": "input"}[image.get("type", "output")]
        return os.path.join(base_dir, folder, image.get("subfolder", ""), image["filename"])

    # --- waiting ------------------------------------------------------------------------------

    def wait_history(self, prompt_id: str, timeout_s: float) -> dict:
        """Poll /history/<id> until the prompt has finished; bounded by timeout_s."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout_s:.0f} s "
                                   f"(queue: {self.get_json('/queue')})")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def _queue_and_wait_ws(self, prompt: dict, timeout_s: float) -> str:
        import aiohttp
        ws_url = self.url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
        deadline = time.monotonic() + timeout_s
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.request_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.ws_connect(ws_url, heartbeat=30) as ws:
                # Queued only once the socket is open, so no message about this prompt can be missed.
                prompt_id = await asyncio.to_thread(self.queue, prompt)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no end-of-run message for prompt {prompt_id} within {timeout_s:.0f} s")
                    message = await ws.receive(timeout=remaining)
                    if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                        raise ConnectionError(f"websocket closed while prompt {prompt_id} ran")
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary previews
                    event = json.loads(message.data)
                    data = event.get("data") or {}
                    if data.get("prompt_id") != prompt_id:
                        continue
                    if event.get("type") in FINISHED:
                        return prompt_id
                    if event.get("type") == "executing" and data.get("node") is None:
                        return prompt_id

    def run(self, prompt: dict, timeout_s: float = 600.0, wait: str = "ws") -> PromptResult:
        """Queue an API prompt and wait until it has run (wait="ws": on the websocket; "history": polling)."""
        started = time.monotonic()
        if wait == "ws":
            prompt_id = asyncio.run(self._queue_and_wait_ws(prompt, timeout_s))
        elif wait == "history":
            prompt_id = self.queue(prompt)
        else:
            raise ValueError(f"wait must be 'ws' or 'history', not {wait!r}")
        # The history entry is written just after the last websocket message: a short bounded poll.
        remaining = max(30.0, timeout_s - (time.monotonic() - started))
        entry = self.wait_history(prompt_id, remaining)
        status = entry.get("status", {})
        return PromptResult(prompt_id=prompt_id, status=status.get("status_str", "unknown"),
                            outputs=entry.get("outputs", {}), messages=[tuple(m) for m in status.get("messages", [])],
                            seconds=time.monotonic() - started)
