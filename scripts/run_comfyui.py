"""Run ComfyUI's main.py (in $COMFYUI_DIR) as __main__; SIGINT and SIGTERM both stop it as Ctrl+C does.

A process started in the background by a non-interactive shell inherits SIGINT as ignored and
Python keeps it so; SIGTERM would end ComfyUI without its own shutdown. Here both raise
KeyboardInterrupt, which main.py handles ("Stopped server") before it removes its temp folder.
"""
import os
import runpy
import signal
import sys


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    comfy_dir = os.path.abspath(os.environ["COMFYUI_DIR"])
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    main_py = os.path.join(comfy_dir, "main.py")
    sys.argv = [main_py, *sys.argv[1:]]
    sys.path[0] = comfy_dir  # as if main.py had been started directly
    os.chdir(comfy_dir)
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main()
