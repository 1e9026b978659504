"""The feature cache's memory: counted from the views' shapes and dtypes, said in one line, refused past the share."""

import pytest
import torch

from semmae.data.cache_memory import cache_bytes, check_cache_memory, physical_memory
from semmae.errors import ConfigError


def test_bytes_of_tokens_and_pooled_features():
    views = {"tokens/6": ((65, 128), torch.bfloat16), "pooled/6": ((128,), torch.float32)}
    assert cache_bytes([60000, 10000], views) == 70000 * (65 * 128 * 2 + 128 * 4)


def test_the_line_and_the_refusal():
    ram = physical_memory()
    assert ram > 2**28
    line = check_cache_memory(ram // 10, 0.5, "cpu", fix="lower it")
    assert "10.0% of RAM" in line and "model.cache_max_ram_share=0.5" in line
    with pytest.raises(ConfigError, match=r"needs .* GB, 60.0% of RAM .*: lower it"):
        check_cache_memory(int(ram * 0.6), 0.5, "cpu", fix="lower it")
    with pytest.raises(ConfigError, match="must be a share"):
        check_cache_memory(1, 1.5, "cpu", fix="")
