"""The aten ops a block of code runs, for tests that hold per-call work to a fixed, sync-free sequence.

A value read on the host shows up as aten._local_scalar_dense (on a GPU, a synchronisation); a host-to-device copy
as aten._to_copy or aten.copy_.
"""
from __future__ import annotations

VIEWS = frozenset({"aten.view", "aten._unsafe_view", "aten.alias", "aten.expand", "aten.detach", "aten.slice",
                   "aten.select", "aten.transpose", "aten.permute", "aten.t", "aten.unsqueeze", "aten.reshape"})


class OpLog:
    """with OpLog() as log: ...  ->  log.ops, every aten op by name; log.work(), those that are not views."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        ops = self.ops = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                ops.append(str(func.overloadpacket))
                return func(*args, **(kwargs or {}))
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)

    def work(self) -> list[str]:
        return [op for op in self.ops if op not in VIEWS]

    def host_reads_or_copies(self) -> list[str]:
        return [op for op in self.ops if "local_scalar_dense" in op or "_to_copy" in op or op == "aten.copy_"
                or "nonzero" in op]
