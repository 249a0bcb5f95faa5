"""`rlaif audit RUN_DIR`: the human audit desk, a small FastAPI app over RUN_DIR/audit.sqlite.

A reviewer opens the URL the command prints (the desk's own token, or their own from
``rlaif audit RUN_DIR --add-reviewer NAME``), sees the next AI label in the queue that they have not reviewed
and that still needs a reviewer — prompt, both responses, the AI's pick, its probability, principle and
rationale, and why it was queued — and agrees, flips or flags it (keys a / f / g, n for the next one). Every
verdict records who gave it. Their verdicts override the AI labels the next time `train` (or `reward`) runs.

**Blind review** (``blind``: 'slice' by default, 'all', 'off'): on the random slice (or every item) the two
responses are shown in an order drawn per (pair, reviewer), nothing says which one the AI picked, and the
AI's probability, rationale and the reasons for queueing are hidden until the reviewer has answered (keys
a / b: "A is better", "B is better"; g to flag). The answer is stored relative to the AI's pick, with the
sides the reviewer saw, so the agreement estimate is not anchored on the AI's choice.

Safety, because the page shows text written by models and by whoever wrote the prompts:
- binds 127.0.0.1 unless told otherwise;
- every request needs the token: once in the URL (``?token=``), which sets an HttpOnly, SameSite=Strict
  cookie and redirects to a clean URL; API clients send ``Authorization: Bearer TOKEN``;
- every form POST also carries a CSRF token derived from the token and must come from this origin;
- all model text is HTML-escaped by Jinja2's autoescape, and the Content-Security-Policy allows only
  this app's own script file, so even an escaping slip could not run an injected script.
"""


import hashlib
import hmac
import secrets
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from openrlaif.audit.db import OWNER, VERDICTS, AuditDB
from openrlaif.audit.queue import shows_swapped

BLIND_MODES = ("slice", "all", "off")

COOKIE = "rlaif_audit"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'none'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; connect-src 'self'")


def _prompt(row: dict) -> str:
    p = row.get("prompt")
    if isinstance(p, str):
        return p
    turns = [m for m in p or [] if isinstance(m, dict)]
    if len(turns) == 1:
        return str(turns[0].get("content", ""))
    return "\n\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in turns)


def create_app(db: AuditDB, token: str | None = None, title: str = "OpenRLAIF audit desk", blind: str = "slice"):
    """The desk as an ASGI app. Every request needs a token: ``token`` (the desk's own, random when None; its
    verdicts are the owner's) or a reviewer's (``AuditDB.add_reviewer``)."""
    from fastapi import FastAPI, Form, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    if blind not in BLIND_MODES:
        raise ValueError(f"blind must be one of {', '.join(BLIND_MODES)}")
    token = token or secrets.token_urlsafe(24)
    here = Path(str(resources.files("openrlaif") / "audit"))
    env = Environment(loader=FileSystemLoader(str(here / "templates")), autoescape=select_autoescape(default=True))
    script = (here / "static" / "desk.js").read_text(encoding="utf-8")
    style = (here / "static" / "desk.css").read_text(encoding="utf-8")
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token = token
    app.state.db = db

    def sent_token(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(COOKIE) or ""

    def who(request: Request) -> str | None:
        """The reviewer a request speaks for: the owner for the desk's token, a reviewer for theirs, else None."""
        sent = sent_token(request)
        if not sent:
            return None
        if hmac.compare_digest(sent.encode(), token.encode()):
            return OWNER
        return db.reviewer_for(sent)

    def csrf_of(request: Request) -> str:
        return hmac.new(sent_token(request).encode(), b"csrf", hashlib.sha256).hexdigest()

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not origin:
            return True  # non-browser clients; browsers send Origin on every cross-site POST
        host = request.headers.get("host", "")
        return urlsplit(origin).netloc == host

    def blind_for(item: dict) -> bool:
        return blind == "all" or (blind == "slice" and item["random_slice"])

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" would make form POSTs send Origin: null
        response.headers["Cache-Control"] = "no-store"
        return response

    def refuse(status: int, why: str) -> Response:
        return PlainTextResponse(why, status_code=status)

    def view_of(item: dict, reviewer: str) -> dict:
        """What the page shows of an item. Blind and not yet answered by this reviewer: the two responses in
        this reviewer's order and nothing of the AI's verdict."""
        from openrlaif.data.preferences import text_of

        row, mine = item["row"], item["verdict"]
        is_blind = blind_for(item)
        swapped = is_blind and shows_swapped(item["pair_id"], reviewer)
        chosen, rejected = text_of(row.get("chosen")), text_of(row.get("rejected"))
        view = {"pair_id": item["pair_id"], "prompt": _prompt(row), "round": item["round"], "blind": is_blind,
                "a": rejected if swapped else chosen, "b": chosen if swapped else rejected,
                "ai_side": "B" if swapped else "A", "judge": row.get("judge") or "",
                "principle": row.get("principle") or "", "verdict": mine,
                "revealed": not is_blind or mine is not None}
        if view["revealed"]:
            view.update(p_chosen=row.get("p_chosen"), rationale=row.get("rationale") or "", reasons=item["reasons"],
                        scores_ab=row.get("scores_ab"), scores_ba=row.get("scores_ba"))
            if mine is not None:
                view["mine"] = describe(mine["verdict"], view["ai_side"]) if is_blind else mine["verdict"]
        return view

    def page(item: dict | None, reviewer: str, csrf: str, message: str = "", answered: dict | None = None) -> HTMLResponse:
        stats = db.stats()
        html = env.get_template("desk.html").render(
            title=title, item=view_of(item, reviewer) if item is not None else None, stats=stats,
            csrf=csrf, message=message, verdicts=VERDICTS, reviewer=reviewer, answered=answered)
        return HTMLResponse(html)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, item: str | None = None, after: str | None = None, answered: str | None = None):
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()) and db.reviewer_for(given) is None:
                return refuse(401, "wrong token: open the URL that `rlaif audit` printed")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/")
            return response
        reviewer = who(request)
        if reviewer is None:
            return refuse(401, "this desk needs its token: open the URL that `rlaif audit` printed")
        csrf = csrf_of(request)
        # After a blind answer: what the reviewer chose, and now the AI's pick.
        reveal = None
        if answered:
            done = db.item(answered, reviewer)
            if done is not None and done["verdict"] is not None:
                reveal = view_of(done, reviewer)
        if item:
            found = db.item(item, reviewer)
            if found is None:
                return refuse(404, "no such item in this audit queue")
            return page(found, reviewer, csrf, answered=reveal)
        nxt = db.next_item(after, reviewer)
        return page(nxt, reviewer, csrf, "" if nxt else "The queue is done: every item has the verdicts it needs.",
                    answered=reveal)

    @app.get("/static/desk.js")
    def desk_js(request: Request):
        return Response(script, media_type="text/javascript")

    @app.get("/static/desk.css")
    def desk_css(request: Request):
        return Response(style, media_type="text/css")

    @app.post("/verdict")
    def verdict_form(request: Request, pair_id: str = Form(...), verdict: str = Form(...), note: str = Form(""),
                     csrf_token: str = Form("")):
        reviewer = who(request)
        if reviewer is None:
            return refuse(403, "refused: no valid token")
        if not hmac.compare_digest(csrf_token.encode(), csrf_of(request).encode()) or not same_origin(request):
            return refuse(403, "refused: the form did not come from this desk")
        found = db.item(pair_id, reviewer)
        if found is None:
            return refuse(404, "no such item in this audit queue")
        is_blind = blind_for(found)
        swapped = is_blind and shows_swapped(pair_id, reviewer)
        if is_blind and verdict in ("A", "B"):  # a blind choice of side, stored relative to the AI's pick
            verdict = "agree" if (verdict == "A") != swapped else "flip"
        if verdict not in VERDICTS:
            return refuse(400, f"verdict must be one of {', '.join(VERDICTS)} (or A / B on a blind item)")
        db.record(pair_id, verdict, note, reviewer, blind=is_blind, swapped=swapped)
        return RedirectResponse(f"/?after={pair_id}&answered={pair_id}", status_code=303)

    @app.get("/api/items")
    def api_items(request: Request, limit: int = 50):
        if who(request) is None:
            return refuse(401, "needs Authorization: Bearer TOKEN")
        return JSONResponse([db.item(p) for p in db.pair_ids(max(1, min(limit, 1000)))])

    @app.get("/api/stats")
    def api_stats(request: Request):
        if who(request) is None:
            return refuse(401, "needs Authorization: Bearer TOKEN")
        return JSONResponse(db.stats())

    @app.post("/api/verdict")
    async def api_verdict(request: Request):
        """JSON {pair_id, verdict: agree | flip | flag (relative to the AI's pick), note}; the reviewer is the
        token's owner (a 'reviewer' field naming someone else is refused)."""
        reviewer = who(request)
        if reviewer is None:
            return refuse(403, "refused: no valid token")
        if not same_origin(request):
            return refuse(403, "refused: cross-origin request")
        try:
            body = await request.json()
        except ValueError:
            return refuse(400, "send JSON: {pair_id, verdict, note}")
        if not isinstance(body, dict) or body.get("verdict") not in VERDICTS or not isinstance(body.get("pair_id"), str):
            return refuse(400, f"send JSON {{pair_id, verdict: {' | '.join(VERDICTS)}, note}}")
        if body.get("reviewer") not in (None, "", reviewer):
            return refuse(403, f"refused: this token speaks for '{reviewer}', not '{body['reviewer']}'")
        try:
            db.record(body["pair_id"], body["verdict"], str(body.get("note", "")), reviewer)
        except KeyError:
            return refuse(404, "no such item in this audit queue")
        return JSONResponse({"ok": True, "latest": db.latest(body["pair_id"], reviewer)})

    return app


def describe(verdict: str, ai_side: str) -> str:
    """A stored verdict in the words of the blind page that took it."""
    other = "B" if ai_side == "A" else "A"
    return {"agree": f"{ai_side} is better", "flip": f"{other} is better"}.get(verdict, "flag")
