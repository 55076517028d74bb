"""Test and demo harness, never imported by the node pack: random-weight SD1.5/SDXL models and checkpoint,
ComfyUI in-process (workflows), the real server as a child process (server) and its HTTP/websocket client
(client), the web page in headless Chromium (browser), example-workflow building (ui_builder), HRV fuzzing (fuzz)."""
