"""core.hostmem against glibc itself: page faults of a large block allocated, touched and freed twice."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = 64 * 2**20 // 4096  # a 64 MiB block: over glibc's largest mmap threshold (32 MiB)
PROBE = f"""
import ctypes, json, resource, sys
sys.path.insert(0, {str(ROOT)!r})
from core import hostmem
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc({PAGES * 4096})
    ctypes.memset(block, 1, {PAGES * 4096})
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = [faults(), faults()]
kept = hostmem.keep_freed_memory()
faults()
reused = faults()
hostmem.release_freed_memory()
print(json.dumps({{"default": default, "kept": kept, "reused": reused, "released": faults()}}))
"""


def probe(**env: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin", **env})
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_kept_memory_is_reused_without_page_faults_until_released():
    seen = probe()
    assert all(count > 0.9 * PAGES for count in seen["default"])  # glibc maps fresh pages every time
    assert seen["kept"] is True
    assert seen["reused"] < 0.05 * PAGES  # the freed block stayed in the heap, already touched
    assert seen["released"] > 0.9 * PAGES  # malloc_trim gave it back to the kernel


def test_the_setting_can_be_turned_off():
    seen = probe(COSCOPE_KEEP_FREED_MEMORY="0")
    assert seen["kept"] is False
    assert seen["reused"] > 0.9 * PAGES
