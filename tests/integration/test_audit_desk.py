"""The audit desk in real headless Chromium over real HTTP: load the queue, agree and flip with the
keyboard, see the stored verdicts; model text with script and onerror payloads renders as text and runs
nothing; writes without the token (or from another origin) are refused."""

import json

import httpx
import pytest
from browser import LiveServer

from openrlaif.audit.app import create_app
from openrlaif.audit.prepare import prepare_queue
from openrlaif.audit.queue import pair_id

PAYLOAD = ('<script>window.__pwned = 1; alert("xss")</script><img src=x onerror="window.__pwned = 2; alert(2)">'
           '</pre><b onmouseover="alert(3)">bold?</b>')


def pref(i, p, chosen=None, principle="helpfulness"):
    return {"prompt": [{"role": "user", "content": f"Question {i}: how do I water a cactus?"}],
            "chosen": [{"role": "assistant", "content": chosen or f"Answer {i}: sparingly, every few weeks."}],
            "rejected": [{"role": "assistant", "content": f"Answer {i}: flood it daily."}],
            "p_chosen": p, "principle": principle, "judge": "test-judge", "scores_ab": p, "scores_ba": p,
            "rationale": f"rationale {i} <i>not italic</i>", "source": "ai", "round": 1}


@pytest.fixture
def desk(tmp_path):
    run = tmp_path / "run"
    (run / "round_1").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    rows = [pref(i, 0.55 + i * 0.04) for i in range(6)] + [pref(99, 0.51, chosen=PAYLOAD, principle="<script>x</script>")]
    (run / "round_1" / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    db, added = prepare_queue(run, random_share=0.3, min_random=2)
    assert added == {"round_1": 7}
    with LiveServer(create_app(db, "s3cret-token", blind="off")) as server:
        yield server, db, rows
    db.close()


def open_desk(browser, server):
    context = browser.new_context()
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{server.url}/?token=s3cret-token")
    assert page.url == f"{server.url}/"  # the token left the address bar for an HttpOnly cookie
    return context, page, dialogs


def test_review_the_queue_with_the_keyboard(browser, desk):
    server, db, rows = desk
    context, page, _ = open_desk(browser, server)
    first = page.locator("#item").get_attribute("data-pair-id")
    assert first == db.next_item()["pair_id"]
    assert page.locator("#prompt").inner_text().startswith("Question")
    assert "0 of 7 reviewed" in page.locator("#progress").inner_text()
    with page.expect_navigation():
        page.keyboard.press("a")
    assert db.latest(first)["verdict"] == "agree"
    second = page.locator("#item").get_attribute("data-pair-id")
    assert second != first
    page.fill("#note", "B is the safer advice")
    page.locator("#note").press("f")  # typing in the note does not trigger a shortcut
    assert db.latest(second) is None
    with page.expect_navigation():
        page.click("#flip")
    assert db.latest(second) == {**db.latest(second), "verdict": "flip", "note": "B is the safer advicef",
                                 "reviewer": "owner", "blind": False}
    third = page.locator("#item").get_attribute("data-pair-id")
    with page.expect_navigation():
        page.keyboard.press("n")  # next without a verdict
    assert page.locator("#item").get_attribute("data-pair-id") not in (first, second, third)
    assert db.latest(third) is None
    # The stored verdicts are shown when an item is opened again, and counted in the progress line.
    page.goto(f"{server.url}/?item={first}")
    assert "Your verdict: agree" in page.locator("#stored-verdict").inner_text()
    assert "2 of 7 reviewed" in page.locator("#progress").inner_text()
    context.close()


def test_model_text_renders_as_text_and_runs_nothing(browser, desk):
    server, db, rows = desk
    context, page, dialogs = open_desk(browser, server)
    target = pair_id(rows[-1])
    page.goto(f"{server.url}/?item={target}")
    chosen = page.locator("#response-a")  # not blind: the AI's pick is response A
    assert chosen.inner_text() == PAYLOAD  # shown literally, character for character
    assert page.locator("#principle").inner_text() == "<script>x</script>"
    assert page.locator("#rationale").inner_text() == "rationale 99 <i>not italic</i>"
    assert chosen.locator("img, script, b").count() == 0 and page.locator("img").count() == 0
    page.hover("#response-a")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None and dialogs == []
    # The keyboard script still works on this page (it is the only script allowed to run).
    with page.expect_navigation():
        page.keyboard.press("g")
    assert db.latest(target)["verdict"] == "flag"
    context.close()


def test_writes_without_the_token_or_from_another_origin_are_refused(desk):
    server, db, rows = desk
    target = pair_id(rows[0])
    form = {"pair_id": target, "verdict": "flip", "note": "", "csrf_token": ""}
    with httpx.Client(base_url=server.url) as anon:
        assert anon.get("/").status_code == 401
        assert anon.get("/?token=wrong").status_code == 401
        assert anon.post("/verdict", data=form).status_code == 403
        assert anon.post("/api/verdict", json={"pair_id": target, "verdict": "flip"}).status_code == 403
        assert anon.get("/api/items").status_code == 401
    with httpx.Client(base_url=server.url) as reviewer:
        page = reviewer.get("/?token=s3cret-token", follow_redirects=True)
        assert page.status_code == 200 and "rlaif_audit" in reviewer.cookies
        assert "script-src 'self'" in page.headers["content-security-policy"]
        csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        # The cookie alone is not enough: a form without the CSRF token, or from another origin, is refused.
        assert reviewer.post("/verdict", data=form).status_code == 403
        evil = reviewer.post("/verdict", data={**form, "csrf_token": csrf}, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403
        assert db.latest(target) is None
        ok = reviewer.post("/verdict", data={**form, "csrf_token": csrf})
        assert ok.status_code == 303 and db.latest(target)["verdict"] == "flip"
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer s3cret-token"}) as api:
        r = api.post("/api/verdict", json={"pair_id": target, "verdict": "agree", "note": "on second thought"})
        assert r.status_code == 200 and db.latest(target)["verdict"] == "agree"
        assert api.post("/api/verdict", json={"pair_id": target, "verdict": "maybe"}).status_code == 400
        stats = api.get("/api/stats").json()
        assert stats["queued"] == 7 and stats["reviewed"] == 1


@pytest.fixture
def team_desk(tmp_path):
    run = tmp_path / "run"
    (run / "round_1").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    rows = [pref(i, 0.55 + i * 0.04) for i in range(8)]
    (run / "round_1" / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    db, _ = prepare_queue(run, random_share=0.5, min_random=2)
    alice = db.add_reviewer("alice")
    with LiveServer(create_app(db, "owner-token")) as server:  # blind review on the random slice (the default)
        yield server, db, rows, alice
    db.close()


def test_a_blind_item_hides_the_ai_verdict_until_the_reviewer_answers(browser, team_desk):
    from openrlaif.audit.queue import shows_swapped

    server, db, rows, alice = team_desk
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server.url}/?token={alice}")
    assert "reviewing as alice" in page.locator("#reviewer").inner_text()
    by_id = {pair_id(r): r for r in rows}
    blind_id = next(p for p in sorted(db.random_slice()))
    page.goto(f"{server.url}/?item={blind_id}")
    swapped = shows_swapped(blind_id, "alice")
    chosen, rejected = (by_id[blind_id][k][0]["content"] for k in ("chosen", "rejected"))
    assert page.locator("#response-a").inner_text() == (rejected if swapped else chosen)
    assert page.locator("#response-b").inner_text() == (chosen if swapped else rejected)
    text = page.locator("body").inner_text()
    assert "AI's pick" not in text and "rationale" not in text and "probability" not in text
    assert page.locator("#p-chosen").count() == 0 and page.locator(".reason").count() == 0
    with page.expect_navigation():
        page.keyboard.press("b")  # "B is better"
    stored = db.latest(blind_id, "alice")
    assert stored["verdict"] == ("agree" if swapped else "flip")  # relative to the AI's pick
    assert stored["reviewer"] == "alice" and stored["blind"] is True and stored["swapped"] is swapped
    reveal = page.locator("#reveal").inner_text()
    assert "You said B is better" in reveal and f"The AI picked {'B' if swapped else 'A'}" in reveal
    # Once answered, the item shows the AI's verdict; a prioritised item is never blind.
    page.goto(f"{server.url}/?item={blind_id}")
    assert page.locator("#p-chosen").count() == 1 and "Your verdict: B is better" in page.inner_text("#stored-verdict")
    open_id = next(pair_id(r) for r in rows if pair_id(r) not in db.random_slice())
    page.goto(f"{server.url}/?item={open_id}")
    assert "Response A — the AI's pick" in page.inner_text("#item") and page.locator("#agree").count() == 1
    context.close()


def test_each_token_speaks_for_its_reviewer_only(team_desk):
    server, db, rows, alice = team_desk
    target = pair_id(rows[0])
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {alice}"}) as api:
        r = api.post("/api/verdict", json={"pair_id": target, "verdict": "flip"})
        assert r.status_code == 200 and r.json()["latest"]["reviewer"] == "alice"
        forged = api.post("/api/verdict", json={"pair_id": target, "verdict": "agree", "reviewer": "owner"})
        assert forged.status_code == 403 and db.latest(target)["verdict"] == "flip"
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer owner-token"}) as owner:
        assert owner.post("/api/verdict", json={"pair_id": target, "verdict": "agree"}).status_code == 200
        stats = owner.get("/api/stats").json()
    assert stats["reviewers"] == 2 and stats["verdicts"] == 2 and stats["disputed"] == 1
    db.remove_reviewer("alice")  # a revoked token opens nothing
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {alice}"}) as api:
        assert api.get("/api/stats").status_code == 401
        assert api.post("/api/verdict", json={"pair_id": target, "verdict": "flip"}).status_code == 403
