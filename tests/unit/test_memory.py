"""core.memory: with the CLI's allocator policy a large block freed and allocated again reuses mapped pages
(no page faults); with glibc's defaults every allocation maps fresh pages. Real processes, real page-fault counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from openrlaif.core.memory import keep_freed_memory, large_blocks_from_heap

PROGRAM = """
import json, resource, sys
from openrlaif.core.memory import keep_freed_memory, large_blocks_from_heap

took = keep_freed_memory() if sys.argv[1] != "default" else False
if sys.argv[1] == "eval":  # the pipeline's setting for the eval stage
    large_blocks_from_heap(False)
SIZE = 64 << 20  # above glibc's largest mmap threshold (32 MB): by default an mmap of its own

def touch():
    block = bytearray(SIZE)
    block[::4096] = b"\\x01" * len(range(0, SIZE, 4096))  # write one byte on every page
    return block

del_me = touch(); del del_me  # the first allocation maps its pages either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = touch(); del again
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    pages = (64 << 20) // 4096
    default, tuned = faults("default"), faults("tuned")
    assert tuned["took"] is True
    assert default["faults"] >= pages // 2  # fresh pages, faulted in again
    assert tuned["faults"] < pages // 20  # the heap's pages, still mapped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_stage_can_give_large_blocks_their_own_mapping_again():
    pages = (64 << 20) // 4096
    evaluating = faults("eval")
    assert evaluating["took"] is True
    assert evaluating["faults"] >= pages // 2  # mapped afresh and returned on free, as by default


def test_system_setting_leaves_the_allocator_alone():
    assert keep_freed_memory({"OPENRLAIF_MALLOC": "system"}) is False


def test_without_the_cli_s_policy_a_stage_sets_nothing():
    assert large_blocks_from_heap(False) is False  # this test process never called keep_freed_memory
