"""One writer per run directory: while a real process holds RUN_DIR's lock, a second `rlaif` stage on it exits 2
with one line naming the holder and writes nothing; `rlaif show`/`report` still read it; once the holder is
SIGKILLed its lock is taken over with a notice."""

import json
import signal
import subprocess
import sys

from conftest import tiny_overrides
from openrlaif.config import load_config
from openrlaif.pipeline import open_run, run_stage
from test_cli import assert_user_error, rlaif

HOLD = """
import sys, time
from openrlaif.core.store import writer_lock
with writer_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    store = open_run(cfg, tmp_path / "run")
    run_stage("generate", cfg, store)  # in-process stages release the lock when they end
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        manifest = store.manifest_path.read_bytes()
        refused = rlaif("label", "-o", store.root)
        assert_user_error(refused, f"is being written by pid {holder.pid}", "rlaif show")
        assert store.manifest_path.read_bytes() == manifest and not store.path("preferences.jsonl").exists()
        assert rlaif("show", store.root).returncode == 0  # readers are never locked out
        assert rlaif("report", store.root).returncode == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    taken = rlaif("label", "-o", store.root, timeout=300)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert f"took over the lock of {store.root}" in taken.stdout + taken.stderr
    assert f"pid {holder.pid}" in taken.stdout + taken.stderr
    assert store.path("preferences.jsonl").is_file()
    assert (store.root / ".lock").read_text() == ""  # released cleanly: no holder left behind


def test_the_lock_is_reentrant_within_a_process_and_released(tmp_path):
    from openrlaif.core.store import writer_lock

    with writer_lock(tmp_path / "r"):
        with writer_lock(tmp_path / "r"):
            assert json.loads((tmp_path / "r" / ".lock").read_text())["pid"]
        assert (tmp_path / "r" / ".lock").read_text()  # still held by the outer block
    assert (tmp_path / "r" / ".lock").read_text() == ""
