"""The `rlaif` command line, run as a real subprocess."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import TINY_OVERRIDES

SUBCOMMANDS = {
    "run": ["--config", "--out", "--force", "--rounds", "overrides"],
    "generate": ["--config", "--out", "--force", "--round", "overrides"],
    "label": ["--config", "--out", "--force", "--round", "overrides"],
    "train": ["--config", "--out", "--force", "--round", "overrides"],
    "eval": ["--config", "--out", "--force", "--round", "overrides"],
    "show": ["run_dir", "--json"],
    "export": ["run_dir", "--round", "--out", "--adapter", "--all-rounds", "--push"],
    "report": ["run_dir"],
    "audit": ["run_dir", "--host", "--port", "--random-share", "--token-env"],
    "convert": ["--force"],
}


def rlaif(*args, timeout=120, cwd=None):
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", COLUMNS="200")
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "openrlaif.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("override,needles", [
    ("train.betta=1", ["train.betta", "unknown config key"]),
    ("generate.n=abc", ["generate.n", "'abc'"]),
    ("data.prompts=/nonexistent.jsonl", ["/nonexistent.jsonl", "not found"]),
    ("model.policy=/no/such/model", ["model.policy", "/no/such/model"]),
])
def test_cli_errors_do_not_create_run_dir(tmp_path, override, needles):
    out = tmp_path / "run"
    proc = rlaif("run", "-o", out, override)
    assert_user_error(proc, *needles)
    assert not out.exists()


def test_cli_empty_prompt_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "run"
    proc = rlaif("run", "-o", out, f"data.prompts={empty}")
    assert_user_error(proc, str(empty), "no prompts")
    assert not out.exists()


def test_cli_missing_config_file(tmp_path):
    out = tmp_path / "run"
    proc = rlaif("run", "-c", tmp_path / "nope.yaml", "-o", out)
    assert_user_error(proc, "nope.yaml", "not found")
    assert not out.exists()


def test_cli_stage_error(tmp_path):
    out = tmp_path / "run"
    proc = rlaif("generate", "-o", out)
    assert_user_error(proc, str(out), "not a run directory", "-c")
    assert not out.exists()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    proc = rlaif("generate", "-c", cfg, "-o", out, "label.pairs=some")
    assert_user_error(proc, "label.pairs")
    assert not out.exists()


def test_cli_report_on_non_run_dir(tmp_path):
    proc = rlaif("report", tmp_path)
    assert_user_error(proc, "not a run directory")


def test_cli_top_level_help():
    proc = rlaif("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert re.search(rf"\b{name}\b", proc.stdout), name


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_cli_subcommand_help(command):
    proc = rlaif(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    for opt in SUBCOMMANDS[command]:
        assert opt in proc.stdout, (command, opt)


def test_cli_run_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = rlaif("run", "-o", out, f"model.policy={tiny_model_dir}", *TINY_OVERRIDES, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"run directory: {out}" in proc.stdout
    m = re.search(r"win rate of the trained policy vs the starting policy: ([0-9.]+) "
                  r"\(95% CI ([0-9.]+)-([0-9.]+), n=(\d+)", proc.stdout)
    assert m, proc.stdout
    ev = json.loads((out / "round_1" / "eval.json").read_text())
    assert float(m.group(1)) == pytest.approx(ev["win_rate"], abs=5e-4)
    assert int(m.group(4)) == ev["n"] == 4
    assert f"report: {out / 'report.md'}" in proc.stdout
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(manifest["stages"][f"round_1/{s}"]["status"] == "done" for s in ("generate", "label", "train", "eval"))

    # `rlaif report RUN_DIR` prints the report it rewrites
    rep = rlaif("report", out)
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout.strip() == (out / "report.md").read_text().strip()
    assert f"plots: {out / 'report.html'}" in rep.stderr

    # the same command again skips every stage
    again = rlaif("run", "-o", out, f"model.policy={tiny_model_dir}", *TINY_OVERRIDES, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already done, skipped") == 4
    assert json.loads((out / "manifest.json").read_text())["stages"] == manifest["stages"]

    # a changed config on the same directory is refused with one line
    changed = rlaif("run", "-o", out, f"model.policy={tiny_model_dir}", *TINY_OVERRIDES, "train.beta=0.5")
    assert_user_error(changed, "different config", "--force")



def _fake_stages(monkeypatch, calls):
    """Stages that only write the file the next stage checks for, and record that they ran."""
    from openrlaif import pipeline

    outputs = {"generate": "candidates.jsonl", "label": "preferences.jsonl", "train": "policy/adapter_config.json",
               "eval": "eval.json"}

    def fake(name):
        def run(cfg, store, k=1):
            calls.append(name)
            path = store.path(outputs[name], k)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 0.7}\n' if name == "label"
                            else "{}\n")  # the pairs train checks before it starts
            return {}
        return run

    monkeypatch.setattr(pipeline, "stage_function", fake)


def test_stage_commands_share_the_run(tiny_model_dir, tmp_path, monkeypatch):
    """Stage commands: -c starts a run, later stages reuse RUN/config.resolved.yaml and keep earlier
    stages; a changed config is refused unless --force."""
    from openrlaif import cli
    from openrlaif.core.errors import UserError
    from openrlaif.core.store import RunStore

    calls = []
    _fake_stages(monkeypatch, calls)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"seed: 3\nmodel:\n  policy: {tiny_model_dir}\n")
    out = tmp_path / "run"
    store = RunStore(out)

    with pytest.raises(UserError, match="not a run directory"):
        cli._stage("generate", None, out, None, False)
    assert not out.exists()
    # a stage whose input is missing fails before anything is written
    with pytest.raises(UserError, match="rlaif generate"):
        cli._stage("label", cfg_file, out, None, False)
    assert not out.exists()

    cli._stage("generate", cfg_file, out, None, False)
    cli._stage("label", None, out, None, False)       # config from the run directory
    cli._stage("train", cfg_file, out, None, False)   # the same config again: accepted
    assert calls == ["generate", "label", "train"]
    assert all(store.stage_done(s) for s in ("generate", "label", "train"))
    assert store.read_manifest()["seeds"] == {"seed": 3}
    assert (out / "report.md").is_file() and (out / "report.html").is_file()

    # overrides apply on top of the run's config; a change is refused without --force
    with pytest.raises(UserError, match="different config"):
        cli._stage("eval", None, out, ["train.beta=0.2"], False)
    assert "eval" not in calls
    cli._stage("eval", None, out, ["train.beta=0.2"], True)
    assert calls[-1] == "eval"
    assert "beta: 0.2" in store.config_path.read_text()
    # --force with a changed config starts the run's bookkeeping over
    assert not store.stage_done("generate") and store.stage_done("eval")


def test_redoing_a_stage_marks_later_stages_stale(tiny_model_dir, tmp_path, monkeypatch):
    from openrlaif import pipeline
    from openrlaif.config import load_config
    from openrlaif.core.store import STAGES, RunStore

    calls = []
    _fake_stages(monkeypatch, calls)
    cfg = load_config(None, [f"model.policy={tiny_model_dir}", *TINY_OVERRIDES])
    out = tmp_path / "run"
    pipeline.run(cfg, out)
    assert calls == list(STAGES)
    store = RunStore(out)
    pipeline.run_stage("label", cfg, store)
    assert store.stage_done("generate") and store.stage_done("label")
    assert store.stage_status("train")["status"] == "stale"
    assert store.stage_status("eval")["status"] == "stale"
    calls.clear()
    pipeline.run(cfg, out)
    assert calls == ["train", "eval"]
    assert all(store.stage_done(s) for s in STAGES)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_servers_off_loopback_need_a_secret_from_the_environment(tmp_path, host):
    """`rlaif serve` and `rlaif audit` bound beyond loopback without a key/token from the environment: one line,
    exit 2, before any model loads; with the secret exported they get past the check (here to the next error)."""
    assert_user_error(rlaif("serve", "--host", host, "--model", tmp_path / "absent"), f"--host {host}",
                      "--api-key-env")
    assert_user_error(rlaif("audit", tmp_path / "run", "--host", host), f"--host {host}", "--token-env")
    env_key = dict(os.environ, SERVE_KEY="s3cret")
    done = subprocess.run([sys.executable, "-m", "openrlaif.cli", "serve", "--host", host, "--api-key-env",
                           "SERVE_KEY", "--model", str(tmp_path / "absent")], capture_output=True, text=True,
                          timeout=120, env=env_key)
    assert done.returncode == 2 and "--model" in done.stderr and "--host" not in done.stderr


def test_loopback_names():
    from openrlaif.core.http import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "my-host", ""))
