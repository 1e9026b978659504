"""MAE's linear lr scaling rule, stated once: lr = blr x effective batch / 256."""


def scaled_lr(blr: float, effective_batch: int) -> float:
    """effective_batch = per-device batch x devices x nodes x gradient-accumulation steps."""
    return float(blr) * int(effective_batch) / 256.0
