"""Fixtures of the attention-backend tests (tests/ops/test_attention.py, test_flash_attn3.py)."""

import pytest
import torch


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch):
    """Pretend a CUDA GPU of a given compute capability is present (checks only, no kernels run)."""

    def set_arch(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)

    return set_arch
