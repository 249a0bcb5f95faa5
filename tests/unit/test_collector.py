"""core.collector: with the CLI's policy, imports run without automatic collections, and full collections after a
stage's end walk only what is new; garbage made after that is still collected. Each case runs in a fresh
process: the collector's state is the interpreter's."""

from __future__ import annotations

import json
import subprocess
import sys

from openrlaif.core.collector import freeze_between_stages

PROGRAM = """
import gc, json, sys, weakref
from openrlaif.core import collector
from openrlaif.pipeline import release_memory

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

out = {"on": collector.freeze_between_stages({"OPENRLAIF_GC": sys.argv[1]})}
with collector.deferred():
    out["enabled_inside"] = gc.isenabled()
    made_inside = cycle()  # garbage as soon as it is made: the deferred block's own collection frees it
    import json as _again  # an import inside the block, as validate_inputs does
out["enabled_after"] = gc.isenabled()
out["inside_freed"] = made_inside() is None
out["frozen_after_deferred"] = gc.get_freeze_count()
ballast = [[i] for i in range(200_000)]  # a stage's long-lived objects (lists are tracked containers)
kept = cycle()
alive = kept()  # alive at the stage's end
release_memory()
out["frozen_after_stage"] = gc.get_freeze_count()
out["walked"] = len(gc.get_objects())  # what a full collection walks now
del alive
gc.collect()
out["cycle_frozen_at_stage_end_freed"] = kept() is None
later = cycle()  # garbage made after the stage: an ordinary collection frees it
gc.collect()
out["later_freed"] = later() is None
print(json.dumps(out))
"""


def run_program(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_policy_defers_collection_and_freezes_survivors():
    on = run_program("on")
    assert on["on"] is True
    assert on["enabled_inside"] is False and on["enabled_after"] is True
    assert on["inside_freed"] is True  # nothing unreachable is frozen: the block collects before it freezes
    assert on["frozen_after_deferred"] > 1000  # the imported modules' objects
    assert on["frozen_after_stage"] >= on["frozen_after_deferred"] + 200_000  # the stage's survivors joined them
    assert on["later_freed"] is True  # collection still works for what is made afterwards
    # the documented price: a cycle alive at a stage's end is not freed when it later becomes garbage
    assert on["cycle_frozen_at_stage_end_freed"] is False


def test_default_setting_leaves_the_collector_alone():
    off = run_program("default")
    assert off["on"] is False
    assert off["enabled_inside"] is True
    assert off["frozen_after_deferred"] == 0 and off["frozen_after_stage"] == 0
    assert off["cycle_frozen_at_stage_end_freed"] is True
    assert off["later_freed"] is True


def test_frozen_objects_are_not_walked_by_full_collections():
    # the imported modules and the stage's 200,000 long-lived containers: walked by every full collection by
    # default, not once frozen
    on, off = run_program("on"), run_program("default")
    assert off["walked"] > 200_000
    assert on["walked"] < 20_000


def test_cli_turns_the_policy_on():
    program = ("import sys\nfrom openrlaif import cli\nfrom openrlaif.core import collector\n"
               "sys.argv = ['rlaif', '--help']\ntry:\n    cli.main()\nexcept SystemExit:\n    pass\n"
               "print(collector.active(), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "True"
    assert freeze_between_stages({"OPENRLAIF_GC": "default"}) is False
