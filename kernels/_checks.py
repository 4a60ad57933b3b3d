"""Input checks the kernel launchers share."""
from __future__ import annotations

import torch


def check_tensors_on_one_device(ref_name: str, **named) -> None:
    """Every value is a tensor on the device of named[ref_name]; the error names the first that is not."""
    ref = named[ref_name]
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.device != ref.device:
            raise ValueError(f"{name} is on device {t.device} but {ref_name} is on {ref.device}: "
                             "all tensors must share one device")
