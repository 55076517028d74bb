"""The demo behind `scripts/start.sh`: a random-weight SD1.5 checkpoint (checkpoint, unets) and ComfyUI run
in-process on UI-format workflows (workflows). `python -m scripts.demo prepare|run`."""
