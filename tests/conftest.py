import os
import sys

import pytest

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PACK_DIR not in sys.path:
    sys.path.insert(0, PACK_DIR)

from hrv.comfy_host import use_comfyui  # noqa: E402

use_comfyui(cpu=True)

REFERENCE_DIR = os.environ.get("HRV_REFERENCE_DIR", os.path.join(PACK_DIR, "..", "shared", "hrv_reference"))


@pytest.fixture(scope="session")
def reference_dir():
    if not os.path.isdir(REFERENCE_DIR):
        pytest.fail(f"reference HRVs not found at {REFERENCE_DIR}; set HRV_REFERENCE_DIR")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def official_dir(tmp_path_factory, reference_dir):
    from hrv.official import import_official
    out = tmp_path_factory.mktemp("official")
    import_official(reference_dir, str(out))
    return str(out)
