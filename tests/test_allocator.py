"""pivotal.allocator: with freed memory retained, a large tensor made again costs no page faults."""

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from pivotal.allocator import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
for i in range(30):  # a step's pattern: the same large tensor made and freed, again and again
    if i == 20:  # glibc's heap settles after some cycles (small blocks split freed large ones)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 << 20)  # 64 MiB, touched
    del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")


def faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@glibc_only
def test_retained_memory_is_reused_without_page_faults():
    applied, retained = faults("retain")
    _, plain = faults("plain")
    assert applied
    # glibc's default maps the block afresh, so every page (4 KiB, or 2 MiB with transparent huge
    # pages) of the last 10 cycles faults again; retained, freed blocks are reused from the heap
    assert plain >= 10 * (64 << 20) // (2 << 20)
    assert retained * 10 < plain


@glibc_only
def test_retain_is_idempotent():
    from pivotal.allocator import retain_freed_memory
    assert retain_freed_memory() and retain_freed_memory()
