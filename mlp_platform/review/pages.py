"""The reviewer's pages (``/review``): the queue, a case with its evidence (the plain-language
explanation, the reason codes, the feature values against their typical values, the request) and
the forms to claim and resolve it, and the decision lookup of a compliance reviewer.

Server-rendered HTML from Jinja templates (``templates/``, autoescaped: every value that comes from
a request, a log or an analyst is text, never markup), plain HTML forms, no JavaScript at all. The
pages act through the same :class:`~mlp_platform.review.api.ReviewDesk` as the API, so roles,
claims, resolutions and the audit records are the API's.

Signing in: the analyst enters their review key once. It is kept in a cookie that scripts cannot
read (HttpOnly), that no other site's page sends (SameSite=Strict), scoped to ``/review`` and Secure
over HTTPS, and it is checked on every request exactly as the API checks a key: any replica serves
any page, and removing a key from the settings signs its holder out everywhere. Every form also
carries a token derived from the key (an HMAC), checked on each post.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mlp_platform.review.api import NotAllowed, Principal, ReviewDesk, cursor, next_after
from mlp_platform.review.cases import STATUSES, Case, CaseConflict, CaseError, CaseNotFound, now_utc

COOKIE = "mlp_review_key"
PAGE_SIZE = 50
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,  # every template, whatever its name: values are text
    undefined=jinja2.StrictUndefined,
    trim_blocks=True, lstrip_blocks=True,
)
_SECURITY_HEADERS = {
    # no script, no frame, nothing from elsewhere: a value that slipped through could not run
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def form_token(key: str) -> str:
    """The token the forms of a signed-in analyst carry (derived from their key, never the key)."""
    return hmac.new(key.encode(), b"mlp-review-form", hashlib.sha256).hexdigest()


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"{value:,.4g}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def _age(since: dt.datetime, now: dt.datetime) -> str:
    seconds = max((now - since).total_seconds(), 0.0)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


_TEMPLATES.filters.update(number=_number)


def feature_rows(case: Case, populations: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The case's features as served, each against its typical value: the median of the training
    population of the version that decided (when this process has it loaded), else the typical value
    its reason carries; ``None`` where neither is known (shown as such, never made up)."""
    evidence = case.evidence
    reasons = {r.get("feature"): r for r in evidence.get("reasons") or [] if isinstance(r, Mapping)}
    rows = []
    for name, value in (evidence.get("features") or {}).items():
        population = populations.get(name)
        typical = population.median if population is not None else reasons.get(name, {}).get("typical")
        direction = None
        if isinstance(value, int | float) and isinstance(typical, int | float) and not math.isnan(value):
            direction = "above" if value > typical else "below" if value < typical else "typical"
        rows.append({"name": name, "value": value, "typical": typical, "direction": direction,
                     "reason": reasons.get(name, {}).get("code")})
    return rows


def explanation(case: Case) -> str:
    """The decision in plain language, from the case's evidence."""
    evidence = case.evidence
    if isinstance(evidence.get("explanation"), str):
        return evidence["explanation"]
    declaration_score = f"{case.score:.4f}"
    parts = [f"On {case.decided_at:%Y-%m-%d %H:%M:%S} UTC, {case.entity_id} received the decision "
             f"'{case.decision}' from model version {case.model_version or '?'} with a score of {declaration_score}."]
    thresholds = evidence.get("thresholds") or {}
    if thresholds:
        parts.append("The policy's thresholds: " + ", ".join(
            f"{action} from {_number(value)}" for action, value in thresholds.items()) + ".")
    reasons = [r for r in evidence.get("reasons") or [] if isinstance(r, Mapping)]
    if reasons:
        parts.append("What raised the score most: " + "; ".join(str(r.get("text", r.get("feature"))) for r in reasons)
                     + ".")
    else:
        parts.append("No single factor pushed the score up.")
    if evidence.get("degraded"):
        parts.append("The feature store could not be reached: fallbacks were used "
                     f"({', '.join(map(str, evidence.get('fallbacks') or []))}) and the decision was sent to review.")
    elif evidence.get("fallbacks"):
        parts.append(f"Fallback values were used for: {', '.join(map(str, evidence['fallbacks']))}.")
    if evidence.get("defaults_applied"):
        parts.append(f"Missing request fields received defaults: {', '.join(map(str, evidence['defaults_applied']))}.")
    return " ".join(parts)


def review_pages(desk: ReviewDesk) -> APIRouter:
    """The routes of the pages (not in the OpenAPI document: they answer HTML)."""
    router = APIRouter(prefix="/review", include_in_schema=False)

    def render(request: Request, template: str, http_status: int = 200, who: Principal | None = None,
               **values: Any) -> HTMLResponse:
        key = request.cookies.get(COOKIE) or ""
        html = _TEMPLATES.get_template(template).render(
            who=who, token=form_token(key) if who else "", deciders=sorted(desk.deciders), statuses=STATUSES,
            **values)
        return HTMLResponse(html, status_code=http_status, headers=_SECURITY_HEADERS)

    def signed_in(request: Request) -> Principal | None:
        return desk.principal(request.cookies.get(COOKIE))

    def refuse_unsigned(request: Request) -> Response:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/review/sign-in?{urlencode({'next': back})}", status_code=303,
                                headers=_SECURITY_HEADERS)

    def not_ready(request: Request, who: Principal) -> HTMLResponse:
        response = render(request, "message.html", 503, who, title="Review database not reachable yet",
                          message="The review database has not answered yet. The cases wait in the decision log "
                                  "and appear here once it does; try again in a few seconds.")
        response.headers["Retry-After"] = "5"
        return response

    def checked_post(request: Request, token: str) -> Principal | None:
        """The signed-in principal of a form post whose token matches its key (None otherwise)."""
        key = request.cookies.get(COOKIE) or ""
        who = desk.principal(key)
        if who is None or not hmac.compare_digest(token.encode(), form_token(key).encode()):
            return None
        return who

    @router.get("")
    def home(request: Request) -> Response:
        return RedirectResponse("/review/queue" if signed_in(request) else "/review/sign-in", status_code=303)

    @router.get("/sign-in")
    def sign_in_page(request: Request, next: str = "/review/queue") -> HTMLResponse:
        return render(request, "sign_in.html", next=_local(next), error=None)

    @router.post("/sign-in")
    def sign_in(request: Request, key: str = Form(..., max_length=400), next: str = Form("/review/queue")) -> Response:
        who = desk.principal(key.strip())
        if who is None:
            return render(request, "sign_in.html", 401, next=_local(next),
                          error="That is not a review key. Ask your administrator for one.")
        response = RedirectResponse(_local(next), status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(COOKIE, key.strip(), httponly=True, samesite="strict", path="/review",
                            secure=request.url.scheme == "https", max_age=12 * 3600)
        return response

    @router.post("/sign-out")
    def sign_out(request: Request, token: str = Form("")) -> Response:
        response = RedirectResponse("/review/sign-in", status_code=303, headers=_SECURITY_HEADERS)
        if checked_post(request, token) is not None:
            response.delete_cookie(COOKIE, path="/review")
        return response

    @router.get("/queue")
    def queue(request: Request, decider: str = "", status: str = "open,claimed", after: str = "") -> Response:
        who = signed_in(request)
        if who is None:
            return refuse_unsigned(request)
        if not desk.ready:
            return not_ready(request, who)
        statuses = [s for s in status.split(",") if s][:3]
        try:
            page = desk.store.queue(desk.scoped(who, decider or None), statuses=statuses, limit=PAGE_SIZE,
                                    after=cursor(after[:200] or None))
        except (CaseError, CaseNotFound) as err:
            return render(request, "message.html", 422 if isinstance(err, CaseError) else 404, who,
                          title="Not a queue", message=str(err))
        token = next_after(page, PAGE_SIZE)
        more = f"/review/queue?{urlencode({'decider': decider, 'status': status, 'after': token})}" if token else None
        now = now_utc()
        rows = [{"case": c, "age": _age(c.decided_at, now),
                 "past_sla": (now - c.decided_at).total_seconds() > 3600 * desk.deciders[c.decider]
                 .declaration.review.sla_hours} for c in page]
        return render(request, "queue.html", who=who, rows=rows, decider=decider, status=",".join(statuses),
                      more=more, visible=who.deciders)

    def case_page(request: Request, who: Principal, case_id: str, *, status: int = 200, error: str | None = None,
                  notice: str | None = None) -> Response:
        try:
            case = desk.visible(case_id, who)
        except CaseNotFound:
            return render(request, "message.html", 404, who, title="No such case",
                          message=f"There is no case {case_id} among the deciders you review.")
        now = now_utc()
        claim_open = case.status == "open" or (
            case.status == "claimed" and (case.claimed_by == who.name or (
                case.claimed_at is not None
                and (now - case.claimed_at).total_seconds() > desk.store.claim_ttl_s)))
        return render(request, "case.html", status, who, case=case, explanation=explanation(case),
                      features=feature_rows(case, desk.deciders[case.decider].populations(case.model_version)),
                      request_fields=_request_fields(case), allowed=desk.allowed(case), claim_open=claim_open,
                      holds=case.status == "claimed" and case.claimed_by == who.name, error=error, notice=notice,
                      age=_age(case.decided_at, now))

    @router.get("/cases/{case_id}")
    def show_case(request: Request, case_id: str, done: str = "") -> Response:
        who = signed_in(request)
        if who is None:
            return refuse_unsigned(request)
        if not desk.ready:
            return not_ready(request, who)
        notice = {"claimed": "You hold this case now.", "resolved": "The case is resolved and recorded in the "
                  "decision log."}.get(done)
        return case_page(request, who, case_id, notice=notice)

    def act(request: Request, case_id: str, token: str, action) -> Response:
        who = checked_post(request, token)
        if who is None:
            return render(request, "message.html", 403, signed_in(request), title="Not accepted",
                          message="This form was not sent from your signed-in session. Open the case again.")
        if not desk.ready:
            return not_ready(request, who)
        try:
            done = action(who)
        except CaseNotFound:
            return case_page(request, who, case_id)
        except NotAllowed as err:
            return case_page(request, who, case_id, status=403, error=str(err))
        except CaseConflict as err:
            return case_page(request, who, case_id, status=409, error=str(err))
        except CaseError as err:
            return case_page(request, who, case_id, status=422, error=str(err))
        return RedirectResponse(f"/review/cases/{quote(case_id, safe='')}?done={done}", status_code=303,
                                headers=_SECURITY_HEADERS)

    @router.post("/cases/{case_id}/claim")
    def claim(request: Request, case_id: str, token: str = Form("")) -> Response:
        def action(who: Principal) -> str:
            desk.claim(case_id, who)
            return "claimed"
        return act(request, case_id, token, action)

    @router.post("/cases/{case_id}/resolve")
    def resolve(request: Request, case_id: str, token: str = Form(""), outcome: str = Form("", max_length=32),
                override: str = Form("", max_length=20), reason: str = Form("", max_length=2000),
                comment: str = Form("", max_length=2000)) -> Response:
        def action(who: Principal) -> str:
            if not outcome:
                raise CaseError("choose an outcome")
            desk.resolve(case_id, who, outcome=outcome, comment=comment, override=override or None,
                         reason=reason or None)
            return "resolved"
        return act(request, case_id, token, action)

    @router.get("/decisions")
    def lookup(request: Request, decision_id: str = "") -> Response:
        who = signed_in(request)
        if who is None:
            return refuse_unsigned(request)
        if not desk.ready:
            return not_ready(request, who)
        decision_id = decision_id.strip()[:200]
        found, status = None, 200
        if decision_id:
            try:
                found = desk.lookup(decision_id, who)
            except CaseNotFound:
                status = 404
        return render(request, "decision.html", status, who, decision_id=decision_id, found=found)

    return router


def _request_fields(case: Case) -> list[tuple[str, Any]]:
    fields = [("decision id", case.case_id), ("entity", case.entity_id)]
    if case.evidence.get("event_time"):
        fields.append(("event time", case.evidence["event_time"]))
    request = case.evidence.get("request")
    if isinstance(request, Mapping):
        fields += [(str(k), v) for k, v in request.items()]
    return fields


def _local(target: str) -> str:
    """A redirect target on these pages only (never another site: ``//evil``, ``https://...``)."""
    if not target.startswith("/review") or target.startswith("//") or "\\" in target:
        return "/review/queue"
    return target
