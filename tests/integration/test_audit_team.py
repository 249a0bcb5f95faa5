"""The audit desk for a team, through the real CLI and real HTTP on loopback: reviewers added with
`rlaif audit RUN --add-reviewer NAME` (their tokens stored hashed), then four of them post 200 verdicts each
at once to a running `rlaif audit` process; none is lost or doubled, every verdict carries its reviewer, and
the desk's human-human agreement is what the posted verdicts say."""

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
from browser import free_port
from test_cli import assert_user_error, rlaif

from openrlaif.audit.db import AuditDB
from openrlaif.audit.queue import human_agreement

REVIEWERS = ["r1", "r2", "r3", "r4"]
N_ITEMS = 200


def fake_run(tmp_path):
    run = tmp_path / "run"
    (run / "round_1").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No answer {i}.", "p_chosen": 0.6,
             "principle": "helpful", "source": "ai", "round": 1} for i in range(N_ITEMS)]
    (run / "round_1" / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def add_reviewer(run, name) -> str:
    proc = rlaif("audit", run, "--add-reviewer", name)
    assert proc.returncode == 0, proc.stderr
    return re.search(r"their token \(shown once, stored hashed\): (\S+)", proc.stdout).group(1)


def test_reviewers_are_added_listed_and_refused_twice(tmp_path):
    run = fake_run(tmp_path)
    token = add_reviewer(run, "alice")
    assert token not in (run / "audit.sqlite").read_bytes().decode("latin-1")  # only its hash is stored
    assert_user_error(rlaif("audit", run, "--add-reviewer", "alice"), "--add-reviewer:", "exists already")
    assert_user_error(rlaif("audit", run, "--add-reviewer", "a b"), "--add-reviewer:", "reviewer name 'a b'")
    assert_user_error(rlaif("audit", run, "--remove-reviewer", "bob"), "no reviewer 'bob'")
    listed = rlaif("audit", run, "--list-reviewers")
    assert listed.returncode == 0 and listed.stdout.startswith("alice\tadded ")
    assert_user_error(rlaif("audit", tmp_path / "nowhere", "--add-reviewer", "x"), "is not a run directory")
    assert_user_error(rlaif("audit", run, "--blind", "sometimes"), "--blind: 'sometimes' is not one of")


def test_four_reviewers_posting_at_once_lose_and_double_nothing(tmp_path):
    run = fake_run(tmp_path)
    tokens = {name: add_reviewer(run, name) for name in REVIEWERS}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "openrlaif.cli", "audit", str(run), "--port", str(port),
                               "--overlap", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/stats", timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline and server.poll() is None, server.stderr.read() if server.poll() else ""
            time.sleep(0.2)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['r1']}"}) as c:
            pairs = [item["pair_id"] for item in c.get("/api/items", params={"limit": 1000}).json()]
        assert len(pairs) == N_ITEMS
        posted = {name: [] for name in REVIEWERS}
        failures = []

        def review(name):
            rng = random.Random(name)
            order = rng.sample(pairs, len(pairs))
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[name]}"}, timeout=30) as c:
                for p in order:
                    verdict = rng.choice(["agree", "agree", "flip"])
                    r = c.post("/api/verdict", json={"pair_id": p, "verdict": verdict})
                    if r.status_code != 200 or r.json()["latest"]["reviewer"] != name:
                        failures.append((name, p, r.status_code, r.text[:200]))
                    posted[name].append((p, verdict))

        threads = [threading.Thread(target=review, args=(n,)) for n in REVIEWERS]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        elapsed = time.perf_counter() - start
        assert not any(t.is_alive() for t in threads), "reviewers still posting after 180 s"
        assert failures == []
        print(f"{len(REVIEWERS) * N_ITEMS} verdicts from {len(REVIEWERS)} threads in {elapsed:.1f} s")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['r2']}"}) as c:
            stats = c.get("/api/stats").json()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    db = AuditDB(run / "audit.sqlite")
    stored = db.conn.execute("SELECT reviewer, pair_id, verdict FROM verdicts ORDER BY id").fetchall()
    db.close()
    assert len(stored) == len(REVIEWERS) * N_ITEMS  # none lost, none doubled
    assert sorted(stored) == sorted((name, p, v) for name, rows in posted.items() for p, v in rows)
    for name in REVIEWERS:
        assert len({p for r, p, _ in stored if r == name}) == N_ITEMS
    expected = human_agreement({p: {name: dict(posted[name])[p] for name in REVIEWERS} for p in pairs})
    assert stats["human_human"] == expected and expected["n"] == N_ITEMS
    assert stats["reviewers"] == 4 and stats["verdicts"] == len(REVIEWERS) * N_ITEMS
