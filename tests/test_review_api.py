"""The review API on the real scoring service: review decisions open cases off the request path, a
reviewer claims and resolves them (the actions land in the hash-chained decision log), roles hold
(scoring keys cannot touch cases, review keys cannot score, a compliance key only reads, a reviewer
sees only its deciders), and cases the live path missed are opened from the log at start."""

from __future__ import annotations

import dataclasses
import time

import pytest
from fastapi.testclient import TestClient

from mlp_platform.review.api import build_desk
from mlp_platform.serving.app import create_app
from mlp_platform.serving.decision_log import verify_log
from tests.test_serving_api import AUTH, make_service, platform, txn  # noqa: F401 - platform is a fixture

ANN, BOB, CARLA = ({"Authorization": f"Bearer {k}"} for k in ("rev-ann", "rev-bob", "comp-carla"))


def review_settings(platform, tmp_path):  # noqa: F811
    s = platform["settings"]
    serving = dataclasses.replace(s.serving, reviewer_keys=(("ann", ("fraud",), "rev-ann"), ("bob", ("credit",), "rev-bob")),
                                  compliance_keys=(("carla", "comp-carla"),))
    return dataclasses.replace(s, review_database_url=f"sqlite:///{tmp_path / 'cases.db'}", serving=serving)


def all_review(service):
    service.config = dataclasses.replace(service.config, threshold_overrides=(("review", 0.0), ("decline", 1.0)))


def wait_for_cases(desk, n: int) -> list:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cases = desk.store.queue(["fraud"], limit=500)
        if len(cases) >= n:
            return cases
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} cases opened")


@pytest.fixture
def desk_client(platform, tmp_path):  # noqa: F811
    service = make_service(platform, tmp_path)
    all_review(service)
    desk = build_desk(review_settings(platform, tmp_path), service=service, metrics_registry=service.metrics.registry)
    with TestClient(create_app(service, desk=desk)) as c:
        c.service, c.desk = service, desk
        yield c


def test_review_decisions_open_cases_that_a_reviewer_resolves_into_the_log(desk_client):
    c = desk_client
    ids = [c.post("/v1/score", json=txn(i, amount=500.0 + i), headers=AUTH).json() for i in range(4)]
    assert {b["decision"] for b in ids} == {"review"}
    cases = wait_for_cases(c.desk, 4)
    assert {x.case_id for x in cases} == {b["decision_id"] for b in ids}
    page = c.get("/v1/review/cases?limit=3", headers=ANN).json()
    assert len(page["cases"]) == 3 and page["next_after"]
    rest = c.get("/v1/review/cases", params={"limit": 3, "after": page["next_after"]}, headers=ANN).json()
    assert len(rest["cases"]) == 1 and rest["next_after"] is None
    case_id = page["cases"][0]["case_id"]
    detail = c.get(f"/v1/review/cases/{case_id}", headers=ANN).json()
    assert detail["evidence"]["reasons"] and set(detail["allowed"]["outcomes"]) == {"fraud", "not_fraud"}

    assert c.post(f"/v1/review/cases/{case_id}/claim", headers=ANN).json()["claimed_by"] == "ann"
    bad = c.post(f"/v1/review/cases/{case_id}/resolve", headers=ANN,
                 json={"outcome": "not_fraud", "override": "approve"})
    assert bad.status_code == 422 and "comment" in bad.json()["detail"]
    forged = c.post(f"/v1/review/cases/{case_id}/resolve", headers=ANN,
                    json={"outcome": "fraud", "reviewer": "mallory"})
    assert forged.status_code == 422  # the reviewer is the key's, not a field
    done = c.post(f"/v1/review/cases/{case_id}/resolve", headers=ANN,
                  json={"outcome": "not_fraud", "override": "approve", "comment": "holder confirmed <b>by phone</b>"})
    assert done.status_code == 200, done.text
    assert (done.json()["resolved_by"], done.json()["override_decision"], done.json()["label"]) == ("ann", "approve", 0)
    assert c.post(f"/v1/review/cases/{case_id}/claim", headers=ANN).status_code == 409

    lookup = c.get(f"/v1/review/decisions/{case_id}", headers=CARLA).json()
    assert lookup["decision"]["decision"] == "review" and lookup["case"]["status"] == "resolved"
    assert [a["action"] for a in lookup["actions"]] == ["claim", "resolve"]
    assert lookup["actions"][1]["reviewer"] == "ann" and lookup["actions"][1]["refers_to"] == case_id
    report = verify_log(c.service.decisions.directory)
    assert report.ok, report.describe()
    assert 'mlp_review_resolutions_total{decider="fraud",outcome="not_fraud",override="yes"} 1.0' in \
        c.get("/metrics").text


def test_roles_hold(desk_client):
    c = desk_client
    case_id = c.post("/v1/score", json=txn(40, amount=700.0), headers=AUTH).json()["decision_id"]
    wait_for_cases(c.desk, 1)
    assert c.get("/v1/review/cases", headers=AUTH).status_code == 401  # a scoring key is no review key
    assert c.post(f"/v1/review/cases/{case_id}/claim", headers=AUTH).status_code == 401
    assert c.post("/v1/score", json=txn(41), headers=ANN).status_code == 401  # a review key does not score
    assert c.get("/v1/review/cases", headers=BOB).json()["cases"] == []  # bob reviews credit only
    assert c.get(f"/v1/review/cases/{case_id}", headers=BOB).status_code == 404
    assert c.post(f"/v1/review/cases/{case_id}/claim", headers=BOB).status_code == 404
    assert c.get(f"/v1/review/decisions/{case_id}", headers=BOB).status_code == 404
    assert c.get(f"/v1/review/cases/{case_id}", headers=CARLA).status_code == 200  # compliance reads
    assert c.post(f"/v1/review/cases/{case_id}/claim", headers=CARLA).status_code == 403  # and does not act
    assert c.get("/v1/review/cases", params={"after": "garbage"}, headers=ANN).status_code == 422
    assert c.get("/v1/review/cases", params={"decider": "credit"}, headers=ANN).status_code == 404


def test_cases_the_live_path_missed_are_opened_from_the_log(platform, tmp_path):  # noqa: F811
    """Scored with no desk (as if the process died before its opener wrote them): the next start's
    reconcile opens every review decision's case from the log, once."""
    service = make_service(platform, tmp_path)
    all_review(service)
    with TestClient(create_app(service)) as c:
        ids = {c.post("/v1/score", json=txn(60 + i, amount=800.0), headers=AUTH).json()["decision_id"]
               for i in range(3)}
    service = make_service(platform, tmp_path)  # the same log directory, a new process
    desk = build_desk(review_settings(platform, tmp_path), service=service, metrics_registry=service.metrics.registry)
    with TestClient(create_app(service, desk=desk)):
        cases = wait_for_cases(desk, 3)
        assert {x.case_id for x in cases} == ids
        assert desk.opener.reconcile() == 0  # its position is recorded: nothing new, nothing twice


def test_a_review_database_down_at_start_does_not_stop_scoring(platform, tmp_path):  # noqa: F811
    """Review database unreachable when the process starts: decisions are still scored and logged,
    the review API answers 503 (not a 500, not a crash), and the cases wait in the decision log for
    the reconcile. Reverted to migrating inside build_desk, building the desk raises."""
    settings = dataclasses.replace(review_settings(platform, tmp_path),
                                   review_database_url="postgresql+psycopg2://postgres@127.0.0.1:1/review")
    service = make_service(platform, tmp_path)
    all_review(service)
    desk = build_desk(settings, service=service, metrics_registry=service.metrics.registry)
    with TestClient(create_app(service, desk=desk)) as c:
        scored = c.post("/v1/score", json=txn(80, amount=900.0), headers=AUTH)
        assert scored.status_code == 200 and scored.json()["decision"] == "review"
        listed = c.get("/v1/review/cases", headers=ANN)
        assert listed.status_code == 503 and listed.headers["retry-after"] == "5"
        assert service.decisions.get(scored.json()["decision_id"]) is not None  # kept for the reconcile
        assert not desk.opener.ready.is_set()
