"""1,000 mutated HRV files: every one is rejected with a clear HRVFileError, never another exception."""
import random
import struct

import pytest
import torch
from safetensors.torch import save_file

from hrv.cli import main as cli
from hrv.hrv_file import HRV, HRVFileError, checksum, load, normalise_rows, save
from hrv.layout import known_layout

MUTANTS = 1000


def _good_file(path):
    votes = torch.randint(0, 4, (3, 4, 128), generator=torch.Generator().manual_seed(1))
    save(HRV(matrix=normalise_rows(votes.sum(0)), layout=known_layout("sd1"), concepts=list("ABCD"),
             provenance={"k": 1}, votes=votes), str(path))
    return path.read_bytes()


def _consistent(tmp_path, name, tensors, meta_changes):
    """A well-formed safetensors file with a valid checksum but a semantic defect."""
    from safetensors import safe_open
    meta = dict(safe_open(str(tmp_path / "good.safetensors"), framework="pt").metadata())
    meta.update(meta_changes)
    meta["checksum"] = checksum(tensors, meta) if all(t.dtype in (torch.float32, torch.int64) for t in tensors.values()) else "x"
    save_file(tensors, str(tmp_path / name), metadata=meta)
    return (tmp_path / name).read_bytes()


def _mutants(tmp_path, raw, rng):
    (n,) = struct.unpack("<Q", raw[:8])
    semantic = [
        _consistent(tmp_path, "nan.safetensors", {"hrv": torch.full((4, 128), float("nan"))}, {}),
        _consistent(tmp_path, "inf.safetensors", {"hrv": torch.full((4, 128), float("inf"))}, {}),
        _consistent(tmp_path, "neg.safetensors", {"hrv": -torch.ones(4, 128)}, {}),
        _consistent(tmp_path, "shape.safetensors", {"hrv": torch.ones(4, 1300)}, {}),
        _consistent(tmp_path, "rows.safetensors", {"hrv": torch.ones(7, 128)}, {}),
        _consistent(tmp_path, "f64.safetensors", {"hrv": torch.ones(4, 128, dtype=torch.float64)}, {}),
        _consistent(tmp_path, "f16.safetensors", {"hrv": torch.ones(4, 128, dtype=torch.float16)}, {}),
        _consistent(tmp_path, "int.safetensors", {"hrv": torch.ones(4, 128, dtype=torch.int32)}, {}),
        _consistent(tmp_path, "3d.safetensors", {"hrv": torch.ones(1, 4, 128)}, {}),
        _consistent(tmp_path, "novotes.safetensors", {"hrv": torch.ones(4, 128), "votes": torch.ones(2, 4, 100, dtype=torch.int64)}, {}),
        _consistent(tmp_path, "arch.safetensors", {"hrv": torch.ones(4, 128)}, {"architecture": "sdxl"}),
        _consistent(tmp_path, "dup.safetensors", {"hrv": torch.ones(4, 128)}, {"concepts": '["A", "a", "B", "C"]'}),
        _consistent(tmp_path, "nojson.safetensors", {"hrv": torch.ones(4, 128)}, {"head_layout": "{oops"}),
        _consistent(tmp_path, "nomatrix.safetensors", {"other": torch.ones(4, 128)}, {}),
    ]
    for i in range(MUTANTS):
        kind = i % 5
        if kind == 0:      # truncated anywhere
            yield raw[: rng.randrange(0, len(raw) - 1)]
        elif kind == 1:    # 1-8 flipped bits anywhere
            data = bytearray(raw)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            yield bytes(data)
        elif kind == 2:    # oversized or lying header length
            yield struct.pack("<Q", rng.choice([n + rng.randint(1, 10 ** 6), 2 ** 63, 2 ** 40, len(raw)])) + raw[8:]
        elif kind == 3:    # well-formed but wrong dtype, shape, NaN, layout...
            yield semantic[i % len(semantic)]
        else:              # random junk of a plausible size, or a header that is not an object
            yield rng.choice([bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))),
                              struct.pack("<Q", 2) + b"[]" + raw[8 + n:]])


def test_a_thousand_mutated_files_are_rejected_cleanly(tmp_path):
    raw = _good_file(tmp_path / "good.safetensors")
    assert load(str(tmp_path / "good.safetensors")).matrix.shape == (4, 128)
    rng = random.Random(1234)
    target = tmp_path / "mutant.safetensors"
    count = 0
    for data in _mutants(tmp_path, raw, rng):
        if data == raw:
            continue
        target.write_bytes(data)
        with pytest.raises(HRVFileError) as info:
            load(str(target))
        message = str(info.value)
        assert message and "Traceback" not in message and len(message) < 400
        count += 1
    assert count >= MUTANTS - 5


def test_cli_rejects_mutants_without_traceback(tmp_path, capsys):
    raw = _good_file(tmp_path / "good.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(raw[:-7])
    assert cli(["info", str(tmp_path / "cut.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
