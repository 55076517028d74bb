"""Test harness, never shipped with the pack: random-weight models (comfy_models, tiny_pipeline, engineered),
the real server as a child process (server) and its HTTP/websocket client (client), the web page in headless
Chromium (browser), example-workflow building (ui_builder), HRV fuzzing (fuzz)."""
