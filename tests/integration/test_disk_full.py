"""A full disk while a stage writes: the real CLI under a real file-size limit (RLIMIT_FSIZE, which the kernel
enforces like a full disk: the write fails with EFBIG) gives one line naming the file and the space, exit 2; the
previous complete artifact and the manifest are intact, and the same command succeeds once there is room."""

import json
import os
import resource
import subprocess
import sys

from conftest import labelled_run, tiny_overrides

from openrlaif.config import load_config


def rlaif_limited(*args, max_file_bytes: int | None, timeout=300):
    def limit():
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.RLIM_INFINITY))

    env = dict(os.environ, NO_COLOR="1", TERM="dumb", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "openrlaif.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=limit)


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_train_on_a_full_disk_keeps_the_last_adapter_and_the_manifest(tmp_path, tiny_model_dir):
    cfg = load_config(None, tiny_overrides(tiny_model_dir))
    store, _, db = labelled_run(cfg, tmp_path / "run")
    db.close()
    first = rlaif_limited("train", "-o", store.root, max_file_bytes=None)
    assert first.returncode == 0, first.stderr[-3000:]
    policy = store.path("policy")
    before = snapshot(policy)
    assert max(len(b) for b in before.values()) > 64 * 1024  # the adapter cannot fit under the limit below

    proc = rlaif_limited("train", "-o", store.root, max_file_bytes=64 * 1024)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"cannot write {store.root}" in errors[0], errors[0]
    assert "file-size limit was reached (ulimit -f: 64.0 KB)" in errors[0] and "run the same command again" in errors[0]
    assert snapshot(policy) == before  # the previous complete adapter, byte for byte
    manifest = json.loads(store.manifest_path.read_text())  # still whole JSON
    assert manifest["stages"]["round_1/train"]["status"] in ("failed", "running", "done")
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]  # no temp file left behind

    again = rlaif_limited("train", "-o", store.root, max_file_bytes=None)  # room again: the same command succeeds
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(store.manifest_path.read_text())["stages"]["round_1/train"]["status"] == "done"
