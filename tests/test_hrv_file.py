import filecmp
import json
import os
import struct

import numpy as np
import pytest
import torch

import hrv
import hrv.format.official
from hrv.cli import main as cli
from hrv.format.hrv_file import HRV, HRVFileError, load, normalise_rows, save
from hrv.format.layout import known_layout
from hrv.format.official import fetch_official, official_manifest, verify_download


def test_import_export_is_bit_identical(reference_dir, official_dir, tmp_path):
    for name, source in (("sd1_official", "hrv_sd_v1_4.npy"), ("sdxl_official", "hrv_sd_xl_base_1_0.npy")):
        out = tmp_path / f"{name}.npy"
        assert cli(["export", f"{official_dir}/{name}.safetensors", str(out)]) == 0
        assert filecmp.cmp(out, f"{reference_dir}/{source}", shallow=False)
    out = tmp_path / "per_step.npy"
    assert cli(["export", "--per-timestep", f"{official_dir}/sd1_official.safetensors", str(out)]) == 0
    assert filecmp.cmp(out, f"{reference_dir}/hrv_sd_v1_4_per_timestep.npy", shallow=False)


def test_official_files_load_with_their_facts(official_dir, reference_dir):
    sd1 = load(f"{official_dir}/sd1_official.safetensors")
    assert sd1.arch == "sd1" and sd1.matrix.shape == (34, 128) and sd1.per_timestep.shape == (51, 34, 128)
    names = [c["name"] for c in json.load(open(f"{reference_dir}/concepts.json"))["concepts"]]
    assert sd1.concepts == names
    assert torch.allclose(sd1.matrix.sum(1), torch.full((34,), 128.0), atol=1e-3)
    sdxl = load(f"{official_dir}/sdxl_official.safetensors")
    assert sdxl.arch == "sdxl" and sdxl.matrix.shape == (34, 1300)
    assert sdxl.row("color").shape == (1300,)


def test_info_prints_json(official_dir, capsys):
    assert cli(["info", f"{official_dir}/sdxl_official.safetensors"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["architecture"] == "sdxl" and summary["num_heads"] == 1300 and len(summary["concepts"]) == 34
    assert summary["provenance"]["commit"] == official_manifest()["commit"]


def _valid(arch="sd1"):
    layout = known_layout(arch)
    return HRV(matrix=normalise_rows(torch.rand(3, layout.num_heads)), layout=layout, concepts=["A", "B", "C"])


def test_save_load_round_trip_with_votes(tmp_path):
    votes = torch.randint(0, 5, (4, 3, 128), dtype=torch.int64)
    h = HRV(matrix=normalise_rows(votes.sum(0)), layout=known_layout("sd1"), concepts=["A", "B", "C"],
            provenance={"prompts": 2}, votes=votes)
    save(h, str(tmp_path / "x.safetensors"))
    back = load(str(tmp_path / "x.safetensors"))
    assert torch.equal(back.matrix, h.matrix) and torch.equal(back.votes, votes)
    assert back.provenance == {"prompts": 2} and back.layout == h.layout


@pytest.mark.parametrize("matrix,message", [
    (torch.full((3, 128), float("nan")), "NaN"),
    (-torch.ones(3, 128), "negative"),
    (torch.ones(3, 100), "another architecture"),
    (torch.ones(3, 128, dtype=torch.float64), "float32"),
    (torch.ones(2, 128), "names 3 concepts"),
])
def test_bad_matrices_are_rejected(matrix, message):
    with pytest.raises(HRVFileError, match=message):
        HRV(matrix=matrix, layout=known_layout("sd1"), concepts=["A", "B", "C"])


def _rewrite_metadata(src, dst, **changes):
    """Same tensors, changed metadata, valid checksum: only the semantic checks can catch it."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from hrv.format.hrv_file import checksum
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    meta["checksum"] = checksum(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)


def test_damaged_files_fail_clearly(tmp_path):
    good = tmp_path / "good.safetensors"
    save(_valid(), str(good))
    raw = good.read_bytes()
    cases = {
        "truncated": (raw[: len(raw) // 2], "truncated"),
        "empty": (b"", "too short"),
        "header": (struct.pack("<Q", 10 ** 12) + raw[8:], "oversized"),
        "garbage": (struct.pack("<Q", 4) + b"\xff\xfe{[" + raw[12:], "not valid JSON"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(HRVFileError, match=message):
            load(str(path))
    _rewrite_metadata(good, tmp_path / "arch.safetensors", architecture="sd3")
    with pytest.raises(HRVFileError, match="unknown architecture"):
        load(str(tmp_path / "arch.safetensors"))
    _rewrite_metadata(good, tmp_path / "fmt.safetensors", format="lora")
    with pytest.raises(HRVFileError, match="not an HRV file"):
        load(str(tmp_path / "fmt.safetensors"))
    _rewrite_metadata(good, tmp_path / "xl.safetensors", architecture="sdxl")
    with pytest.raises(HRVFileError, match="does not match the sdxl UNet"):
        load(str(tmp_path / "xl.safetensors"))
    path = tmp_path / "stale.safetensors"
    _rewrite_metadata(good, path, concepts='["A", "B", "C"]')
    raw = bytearray(path.read_bytes())
    raw[raw.index(b'\\"A\\"') + 2] = ord("Z")   # a concept renamed by hand after saving
    path.write_bytes(bytes(raw))
    with pytest.raises(HRVFileError, match="checksum"):
        load(str(path))
    with pytest.raises(HRVFileError, match="not a .safetensors HRV"):
        np.save(tmp_path / "x.npy", np.ones((34, 128), np.float32))
        load(str(tmp_path / "x.npy"))


def test_npy_input_is_never_unpickled(tmp_path, reference_dir):
    src = tmp_path / "src"
    src.mkdir()
    for f in os.listdir(reference_dir):
        if f.endswith(".npy"):
            (src / f).write_bytes(open(f"{reference_dir}/{f}", "rb").read())
    np.save(src / "hrv_sd_v1_4.npy", np.array([{"evil": 1}], dtype=object))  # a pickled object array (np.save default)
    with pytest.raises(HRVFileError, match="not a readable .npy"):
        hrv.format.official.import_official(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "sd1_official.safetensors").exists()


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.safetensors"
    save(_valid(), str(path))
    before = path.read_bytes()
    with pytest.raises(HRVFileError):
        bad = _valid()
        bad.matrix = torch.full_like(bad.matrix, float("nan"))
        save(bad, str(path))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]


class _FakeResponse:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, n):
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fetch_verifies_sha256(tmp_path, reference_dir):
    files = official_manifest()["files"]
    by_url = {}
    for entry in files.values():
        by_url[entry["path"]] = open(f"{reference_dir}/{entry['local_name']}", "rb").read()
    requested = []

    def opener(url):
        requested.append(url)
        assert official_manifest()["commit"] in url
        return _FakeResponse(by_url[url.split(official_manifest()["commit"] + "/")[1]])

    written = fetch_official(str(tmp_path / "out"), opener=opener)
    assert len(requested) == len(files) and len(written) == 2
    assert torch.equal(load(written[0]).matrix, torch.from_numpy(np.load(f"{reference_dir}/hrv_sd_v1_4.npy")))

    def tampering_opener(url):
        data = bytearray(by_url[url.split(official_manifest()["commit"] + "/")[1]])
        data[-1] ^= 1
        return _FakeResponse(bytes(data))

    with pytest.raises(HRVFileError, match="sha256"):
        fetch_official(str(tmp_path / "bad"), opener=tampering_opener)
    assert not any(p.name.endswith(".npy") for p in (tmp_path / "bad" / "cache").iterdir())
    with pytest.raises(HRVFileError, match="sha256"):
        verify_download(f"{reference_dir}/hrv_sd_v1_4.npy", "0" * 64)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    (tmp_path / "bad.safetensors").write_bytes(b"1234")
    assert cli(["info", str(tmp_path / "bad.safetensors")]) == 2
    assert "error:" in capsys.readouterr().err


def test_any_flipped_data_bit_is_caught(tmp_path):
    path = tmp_path / "x.safetensors"
    save(_valid(), str(path))
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    for offset in (8 + n, 8 + n + 100, len(raw) - 1):   # first, middle, last byte of tensor data
        flipped = bytearray(raw)
        flipped[offset] ^= 0x04
        path.write_bytes(bytes(flipped))
        with pytest.raises(HRVFileError, match="checksum|NaN|negative"):
            load(str(path))
