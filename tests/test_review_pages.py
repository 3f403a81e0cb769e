"""The reviewer's pages in a real browser: Debian's headless Chromium, driven by Playwright through
``executable_path`` (installed by ``make tools``), against the real scoring service served by uvicorn
on loopback. An analyst signs in with the keyboard, finds a case in the queue, reads its evidence,
claims and resolves it with an override; the hash-chained decision log holds both actions afterwards;
a compliance reviewer reads the decision and its actions and cannot act. Values containing HTML (a
transaction id, an analyst's comment) are shown as text and never run. A screenshot of the case page
is kept in ``test-artifacts/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from mlp_platform.review.api import build_desk
from mlp_platform.serving.app import create_app
from mlp_platform.serving.decision_log import verify_log
from tests.servinglib import served_on_loopback
from tests.test_review_api import all_review, review_settings, wait_for_cases
from tests.test_serving_api import AUTH, make_service, platform, txn  # noqa: F401 - platform is a fixture

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
HOSTILE_ID = "<img src=x onerror=\"document.title='pwned'\">"
HOSTILE_COMMENT = "holder confirmed by phone <script>document.title='pwned'</script>"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise AssertionError("Debian's chromium is not installed: run `make tools` (the test set-up installs it)")
    return found


@pytest.fixture
def served(platform, tmp_path):  # noqa: F811
    """The scoring service with its review desk, served over HTTP by uvicorn (lifespan on)."""
    service = make_service(platform, tmp_path)
    all_review(service)
    desk = build_desk(review_settings(platform, tmp_path), service=service, metrics_registry=service.metrics.registry)
    with served_on_loopback(create_app(service, desk=desk)) as base:
        yield {"base": base, "service": service, "desk": desk}


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in(page, base: str, key: str) -> None:
    page.goto(f"{base}/review")
    assert page.url.startswith(f"{base}/review/sign-in")
    field = page.get_by_label("Review key")  # the field is found by its label
    field.focus()
    page.keyboard.type(key)
    page.keyboard.press("Enter")  # keyboard only
    page.wait_for_url(f"{base}/review/queue**")


@pytest.mark.slow
def test_an_analyst_resolves_a_case_in_a_real_browser_and_the_log_records_it(served, browser):
    base, service, desk = served["base"], served["service"], served["desk"]
    with httpx.Client(base_url=base, timeout=30) as http:
        scored = [http.post("/v1/score", json=txn(i, amount=300.0 + i), headers=AUTH).json() for i in range(2)]
        hostile = http.post("/v1/score", json=txn(9, transaction_id=HOSTILE_ID, amount=900.0), headers=AUTH).json()
    assert {s["decision"] for s in [*scored, hostile]} == {"review"}, hostile
    wait_for_cases(desk, 3)
    case_id = hostile["decision_id"]
    titles: list[str] = []

    page = browser.new_page()
    page.on("dialog", lambda d: (titles.append("dialog"), d.dismiss()))
    sign_in(page, base, "rev-ann")
    # the queue: every case, the hostile transaction id as text (a reverted autoescape would insert an
    # <img> whose onerror renames the page)
    assert page.get_by_role("heading", name="Review queue").is_visible()
    rows = page.locator("table tbody tr")
    assert rows.count() == 3
    assert page.get_by_text(HOSTILE_ID, exact=True).is_visible()  # reverted autoescape: fails here
    assert page.locator("main img").count() == 0 and page.title() != "pwned"

    link = page.get_by_role("link", name=case_id)
    link.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/review/cases/**")
    assert page.get_by_role("heading", name=f"Case {case_id}").is_visible()
    assert "received the decision 'review'" in page.locator("#explanation").inner_text()
    features = page.locator("#features tbody tr")
    assert features.count() == len(service.pool.snapshot[1][service.pool.snapshot[0].champion].feature_names)
    typical = page.locator("#features tbody tr td:nth-child(3)").all_inner_texts()
    assert sum(t != "not known" for t in typical) >= len(typical) - 1  # the training medians are shown
    assert page.locator("#request").get_by_text(HOSTILE_ID, exact=True).is_visible()

    page.get_by_role("button", name="Claim this case").click()
    page.wait_for_url("**done=claimed")
    assert page.get_by_role("status").inner_text() == "You hold this case now."
    assert page.locator("#case-status").inner_text().startswith("claimed by ann")
    # a refusal is shown, not lost: an override without a comment
    page.get_by_label("not fraud").check()
    page.get_by_label("Override the decision").select_option("approve")
    page.get_by_role("button", name="Resolve the case").click()
    assert "an override needs a comment" in page.get_by_role("alert").inner_text()
    page.get_by_label("not fraud").check()
    page.get_by_label("Override the decision").select_option("approve")
    page.get_by_label("Comment").fill(HOSTILE_COMMENT)
    page.get_by_role("button", name="Resolve the case").click()
    page.wait_for_url("**done=resolved")
    assert page.locator("#case-outcome").inner_text().startswith("not_fraud (label 0), by ann")
    assert page.locator("#case-comment").inner_text() == HOSTILE_COMMENT
    assert page.title() != "pwned" and not titles
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review_case_page.png"), full_page=True)
    assert (ARTIFACTS / "review_case_page.png").stat().st_size > 10_000

    # the log afterwards: the chain verifies and holds the claim and the resolution, by ann
    report = verify_log(service.decisions.directory)
    assert report.ok, report.describe()
    actions = [service.decisions.get(f"{case_id}.claim.1"), service.decisions.get(f"{case_id}.resolve.2")]
    assert [a["action"] for a in actions] == ["claim", "resolve"]
    assert actions[1]["reviewer"] == "ann" and actions[1]["override_decision"] == "approve"
    assert actions[1]["comment"] == HOSTILE_COMMENT and actions[1]["refers_to"] == case_id

    # compliance: reads the decision and its actions; no form to act
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{base}/review/sign-in**")
    sign_in(page, base, "comp-carla")
    page.get_by_role("link", name="Decision lookup").click()
    page.get_by_label("Decision id").fill(case_id)
    page.keyboard.press("Enter")
    page.wait_for_url("**decision_id=**")
    assert page.locator("#actions tbody tr").count() == 2
    assert page.locator("#actions").get_by_text(HOSTILE_COMMENT).is_visible()
    page.goto(f"{base}/review/cases/{case_id}")
    assert page.get_by_role("button", name="Claim this case").count() == 0
    assert page.get_by_role("button", name="Resolve the case").count() == 0
    assert page.title() != "pwned" and not titles


def test_forms_need_the_signed_in_token_and_sign_in_refuses_strangers(served):
    base, desk = served["base"], served["desk"]
    with httpx.Client(base_url=base, timeout=30) as http:
        case_id = http.post("/v1/score", json=txn(20, amount=500.0), headers=AUTH).json()["decision_id"]
        wait_for_cases(desk, 1)
        stranger = http.post("/review/sign-in", data={"key": "score-key-123"})  # a scoring key is no review key
        assert stranger.status_code == 401 and "not a review key" in stranger.text
        signed = http.post("/review/sign-in", data={"key": "rev-ann", "next": "https://evil.example/"})
        assert signed.status_code == 303 and signed.headers["location"] == "/review/queue"  # never off-site
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/review" in cookie
        page = http.get(f"/review/cases/{case_id}")
        assert page.status_code == 200 and "script-src" not in page.headers["content-security-policy"]
        # a post without the form's token (another site's page, a forged form) changes nothing
        forged = http.post(f"/review/cases/{case_id}/claim", data={"token": "0" * 64})
        assert forged.status_code == 403
        assert desk.store.get(case_id).status == "open"
        token = page.text.split('name="token" value="')[1].split('"')[0]
        assert http.post(f"/review/cases/{case_id}/claim", data={"token": token}).status_code == 303
        assert desk.store.get(case_id).claimed_by == "ann"
        http.cookies.clear()
        assert http.get("/review/queue").status_code == 303  # signed out: to the sign-in page
