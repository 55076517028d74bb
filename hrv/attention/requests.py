"""Feature requests carried on CONDITIONING entries: {COND_KEY: {feature: request}} in the entry's dict.

ComfyUI copies that dict into the sampler's conds (one uuid per entry), through Combine, SetArea, masks
and Concat (which keeps the first conditioning's dict), so a request follows its prompt wherever it goes.
"""
from __future__ import annotations

from typing import Any, Mapping

COND_KEY = "hrv_requests"


def attach_request(conditioning: list, feature: str, request: Any) -> list:
    """A new CONDITIONING whose every entry carries `request` for `feature` (other features' requests kept)."""
    out = []
    for entry in conditioning:
        tensor, extra = entry[0], dict(entry[1])
        requests = dict(extra.get(COND_KEY) or {})
        requests[feature] = request
        extra[COND_KEY] = requests
        out.append([tensor, extra, *entry[2:]])
    return out


def requests_of(cond: Mapping) -> Mapping[str, Any]:
    """{feature: request} of one conditioning entry's dict (empty when it carries none)."""
    return cond.get(COND_KEY) or {}
