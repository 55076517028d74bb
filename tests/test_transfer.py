"""hrv.attention.transfer: host tensors onto a device, asynchronous on CUDA, a plain copy elsewhere."""
import torch

from hrv.attention.transfer import to_device


def test_cpu_copies_keep_values_and_take_the_dtype():
    host = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    assert torch.equal(to_device(host, torch.device("cpu")), host)
    half = to_device(torch.linspace(0, 1, 5), "cpu", torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, torch.linspace(0, 1, 5).half())


def test_cuda_copies_go_through_pinned_memory_without_blocking(monkeypatch):
    """Without a GPU here: the CUDA branch is checked with the copy recorded instead of run."""
    calls = []

    class Pinned:
        def to(self, device, non_blocking=False):
            calls.append(("to", str(device), non_blocking))
            return "on-device"

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append(("pin",)) or Pinned())
    assert to_device(torch.zeros(3), torch.device("cuda", 0)) == "on-device"
    assert calls == [("pin",), ("to", "cuda:0", True)]


def test_cuda_copies_fall_back_when_memory_cannot_be_pinned(monkeypatch):
    def refuse(self):
        raise RuntimeError("cannot pin memory")
    moved = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **kw: moved.append((a, kw)) or self)
    to_device(torch.zeros(3), torch.device("cuda", 0))
    assert moved == [((torch.device("cuda", 0),), {})]
