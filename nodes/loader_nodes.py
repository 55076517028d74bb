"""HRVLoader and HRVInspect: pick an HRV file, see where a concept lives in the UNet."""
from __future__ import annotations

import logging

log = logging.getLogger("hrv.nodes")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
