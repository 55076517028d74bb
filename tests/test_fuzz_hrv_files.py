"""1,000 mutated HRV files: every one is rejected with a clear HRVFileError, never another exception."""
import random

import pytest

from hrv.cli import main as cli
from hrv.format.hrv_file import HRVFileError, load
from harness.fuzz import KINDS, good_file_bytes, mutants

MUTANTS = 1000


def test_a_thousand_mutated_files_are_rejected_cleanly(tmp_path):
    raw = good_file_bytes(str(tmp_path))
    assert load(str(tmp_path / "good.safetensors")).matrix.shape == (4, 128)
    rng = random.Random(1234)
    target = tmp_path / "mutant.safetensors"
    count = 0
    kinds = set()
    for kind, data in mutants(str(tmp_path), raw, rng, MUTANTS):
        if data == raw:
            continue
        kinds.add(kind.split(":")[0])
        target.write_bytes(data)
        with pytest.raises(HRVFileError) as info:
            load(str(target))
        message = str(info.value)
        assert message and "Traceback" not in message and len(message) < 400
        count += 1
    assert count >= MUTANTS - 5 and kinds == set(KINDS)


def test_cli_rejects_mutants_without_traceback(tmp_path, capsys):
    raw = good_file_bytes(str(tmp_path))
    (tmp_path / "cut.safetensors").write_bytes(raw[:-7])
    assert cli(["info", str(tmp_path / "cut.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
