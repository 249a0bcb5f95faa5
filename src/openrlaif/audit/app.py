"""`rlaif audit RUN_DIR`: the human audit desk, a small FastAPI app over RUN_DIR/audit.sqlite.

A reviewer opens the URL the command prints (it carries a one-time token), sees the next AI label in
the queue — prompt, both responses, the AI's pick, its probability, principle and rationale, and why
it was queued — and agrees, flips or flags it (keys a / f / g, n for the next one). Their verdicts
override the AI labels the next time `train` (or `reward`) runs.

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

from openrlaif.audit.db import VERDICTS, AuditDB

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


def create_app(db: AuditDB, token: str | None = None, title: str = "OpenRLAIF audit desk"):
    """The desk as an ASGI app. ``token`` (random when None) is required for every request."""
    from fastapi import FastAPI, Form, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    token = token or secrets.token_urlsafe(24)
    csrf = hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()
    here = Path(str(resources.files("openrlaif") / "audit"))
    env = Environment(loader=FileSystemLoader(str(here / "templates")), autoescape=select_autoescape(default=True))
    script = (here / "static" / "desk.js").read_text(encoding="utf-8")
    style = (here / "static" / "desk.css").read_text(encoding="utf-8")
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token = token
    app.state.db = db

    def authorised(request: Request) -> bool:
        sent = request.cookies.get(COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            sent = auth[7:].strip()
        return hmac.compare_digest(sent.encode(), token.encode())

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not origin:
            return True  # non-browser clients; browsers send Origin on every cross-site POST
        host = request.headers.get("host", "")
        return urlsplit(origin).netloc == host

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

    def page(item: dict | None, message: str = "") -> HTMLResponse:
        from openrlaif.data.preferences import text_of

        stats = db.stats()
        view = None
        if item is not None:
            row = item["row"]
            view = {"pair_id": item["pair_id"], "prompt": _prompt(row), "chosen": text_of(row.get("chosen")),
                    "rejected": text_of(row.get("rejected")), "p_chosen": row.get("p_chosen"),
                    "principle": row.get("principle") or "", "rationale": row.get("rationale") or "",
                    "judge": row.get("judge") or "", "reasons": item["reasons"], "verdict": item["verdict"],
                    "round": item["round"], "scores_ab": row.get("scores_ab"), "scores_ba": row.get("scores_ba")}
        html = env.get_template("desk.html").render(title=title, item=view, stats=stats, csrf=csrf, message=message,
                                                    verdicts=VERDICTS)
        return HTMLResponse(html)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, item: str | None = None, after: str | None = None):
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return refuse(401, "wrong token: open the URL that `rlaif audit` printed")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        if not authorised(request):
            return refuse(401, "this desk needs its token: open the URL that `rlaif audit` printed")
        if item:
            found = db.item(item)
            if found is None:
                return refuse(404, "no such item in this audit queue")
            return page(found)
        nxt = db.next_item(after)
        return page(nxt, "" if nxt else "The queue is done: every item has a verdict.")

    @app.get("/static/desk.js")
    def desk_js(request: Request):
        return Response(script, media_type="text/javascript")

    @app.get("/static/desk.css")
    def desk_css(request: Request):
        return Response(style, media_type="text/css")

    @app.post("/verdict")
    def verdict_form(request: Request, pair_id: str = Form(...), verdict: str = Form(...), note: str = Form(""),
                     csrf_token: str = Form("")):
        if not authorised(request):
            return refuse(403, "refused: no valid token")
        if not hmac.compare_digest(csrf_token.encode(), csrf.encode()) or not same_origin(request):
            return refuse(403, "refused: the form did not come from this desk")
        if verdict not in VERDICTS:
            return refuse(400, f"verdict must be one of {', '.join(VERDICTS)}")
        try:
            db.record(pair_id, verdict, note)
        except KeyError:
            return refuse(404, "no such item in this audit queue")
        return RedirectResponse(f"/?after={pair_id}", status_code=303)

    @app.get("/api/items")
    def api_items(request: Request, limit: int = 50):
        if not authorised(request):
            return refuse(401, "needs Authorization: Bearer TOKEN")
        rows = db.conn.execute("SELECT pair_id FROM items ORDER BY position LIMIT ?", (max(1, min(limit, 1000)),))
        return JSONResponse([db.item(p) for (p,) in rows.fetchall()])

    @app.get("/api/stats")
    def api_stats(request: Request):
        if not authorised(request):
            return refuse(401, "needs Authorization: Bearer TOKEN")
        return JSONResponse(db.stats())

    @app.post("/api/verdict")
    async def api_verdict(request: Request):
        if not authorised(request):
            return refuse(403, "refused: no valid token")
        if not same_origin(request):
            return refuse(403, "refused: cross-origin request")
        try:
            body = await request.json()
        except ValueError:
            return refuse(400, "send JSON: {pair_id, verdict, note}")
        if not isinstance(body, dict) or body.get("verdict") not in VERDICTS or not isinstance(body.get("pair_id"), str):
            return refuse(400, f"send JSON {{pair_id, verdict: {' | '.join(VERDICTS)}, note}}")
        try:
            db.record(body["pair_id"], body["verdict"], str(body.get("note", "")), str(body.get("reviewer", "")))
        except KeyError:
            return refuse(404, "no such item in this audit queue")
        return JSONResponse({"ok": True, "latest": db.latest(body["pair_id"])})

    return app
