"""report.html of a whole tiny run (PPO on its reward model with the monitor, red team, anchors, human
verdicts), opened in headless Chromium: every plot is drawn, nothing is fetched from outside the file,
model text is escaped; a screenshot is taken."""

import json

from conftest import tiny_overrides

from openrlaif.audit.prepare import prepare_queue
from openrlaif.config import load_config
from openrlaif.pipeline import run
from openrlaif.report_html import FIGURES


def test_report_html_has_every_plot(tmp_path, tiny_model_dir, browser):
    cfg = load_config(None, tiny_overrides(tiny_model_dir) + [
        "train.algo=ppo", "rl.reward=reward_model", "rl.steps=4", "rl.prompts_per_step=2", "rl.k=2",
        "rl.max_new_tokens=8", "reward.epochs=1", "monitor.every=1", "monitor.prompts=2", "eval.red_team_per_category=1",
        "eval.max_anchor_prompts=3"])
    out = tmp_path / "run"
    run(cfg, out)
    # A reviewer agrees with or flips every label of the audit queue.
    db, _ = prepare_queue(out)
    ids = [item[0] for item in db.conn.execute("SELECT pair_id FROM items ORDER BY position").fetchall()]
    for i, pid in enumerate(ids):
        db.record(pid, "agree" if i % 3 else "flip", reviewer="alice")
    for i, pid in enumerate(ids[:4]):  # a second reviewer on four pairs: differs from alice on pair 0 only
        db.record(pid, "agree" if i in (1, 2) else "flip" if i == 3 else "agree", reviewer="bob")
    hh = db.stats()["human_human"]
    db.close()
    assert hh["n"] == min(4, len(ids)) and len(ids) >= 4
    # Model text that looks like markup must stay text.
    samples = out / "round_1" / "samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    rows[0]["trained"] = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from openrlaif.core.store import RunStore
    from openrlaif.report import write_report

    write_report(RunStore(out))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((out / "report.html").as_uri())
    kinds = page.evaluate("Object.fromEntries([...document.querySelectorAll('figure')].map(f => [f.id, f.dataset.kind]))")
    assert kinds == {f"fig-{name}": "plot" for name in FIGURES}, kinds
    for name in FIGURES:
        box = page.locator(f"#fig-{name} svg").first.bounding_box()
        assert box and box["width"] > 200 and box["height"] > 100, (name, box)
    assert all(url.startswith("file://") for url in requests), requests  # self-contained
    assert page.title().startswith("OpenRLAIF report") and page.locator("#samples img").count() == 0
    assert "<script>" in page.locator("#samples").inner_text()
    assert page.locator("#redteam-table tr").count() == 1 + 7 + 1
    caption = page.locator("#fig-audit").inner_text()
    assert (f"people agreed with each other on {hh['agreement']:.0%} of the {hh['n']} pairs two of them decided"
            in caption), caption
    assert "human-human (pairs two people decided)" in (out / "report.md").read_text()
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 50_000
    page.close()
