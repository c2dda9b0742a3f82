"""The history page's bulk action: it acts on the page's current filter, shows the dry
run's count first and changes nothing until confirmed."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from tests.conftest import Service
from tests.integration.helpers import submit, wait_terminal
from tests.integration.test_history_page import csrf_field, sign_in


def hidden_fields(page: str, form_action: str = "/bulk") -> list[tuple[str, str]]:
    form = page[page.index(f'action="{form_action}"'):]
    form = form[: form.index("</form>")]
    return re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)


def form(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def test_bulk_delete_from_the_history_page_previews_then_acts_on_confirmation(service: Service) -> None:
    key = service.new_key()
    tag = uuid.uuid4().hex[:8]
    with service.client(key) as api:
        ids = [submit(api, prompt=f"a winter forest {i}", metadata={"album": tag})["id"] for i in range(2)]
        kept = submit(api, prompt="a summer meadow", metadata={"album": "other"})["id"]
        for job_id in [*ids, kept]:
            wait_terminal(api, job_id)
        with sign_in(service, key) as web:
            history = web.get("/", params={"meta": f"album={tag}"})
            assert history.status_code == 200
            fields = hidden_fields(history.text)
            assert ("meta", f"album={tag}") in fields  # the bulk form carries the page's filter
            preview = web.post("/bulk", data=form([*fields, ("action", "delete")]))
            assert preview.status_code == 200, preview.text
            assert "Delete 2 jobs?" in preview.text
            assert all(api.get(f"/v1/jobs/{i}").json()["deleted_at"] is None for i in ids)  # a preview only

            confirm = hidden_fields(preview.text)
            assert ("confirm", "yes") in confirm
            done = web.post("/bulk", data=form(confirm))
            assert done.status_code == 200 and "2 of 2 matching jobs changed" in done.text
        assert all(api.get(f"/v1/jobs/{i}").json()["deleted_reason"] == "request" for i in ids)
        assert api.get(f"/v1/jobs/{kept}").json()["deleted_at"] is None


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        ([("action", "cancel"), ("status", "queued")], {"Origin": "https://evil.example"}, 403),
        ([("action", "cancel"), ("status", "queued"), ("csrf", "forged")], {}, 403),
        ([("action", "cancel")], {}, 422),  # no filter: nothing is acted on by accident
        ([("action", "explode"), ("status", "queued")], {}, 422),
        ([("action", "cancel"), ("status", "bogus")], {}, 422),
    ],
    ids=["cross-site", "bad-token", "empty-filter", "bad-action", "bad-status"],
)
def test_bulk_form_refuses_forged_or_unfiltered_posts(
    service: Service, data: list[tuple[str, str]], headers: dict[str, str], status: int
) -> None:
    key = service.new_key()
    with service.client(key) as api:
        job = submit(api)
        with sign_in(service, key) as web:
            token = csrf_field(web.get("/").text)
            if not any(k == "csrf" for k, _ in data):
                data = [*data, ("csrf", token)]
            answer = web.post("/bulk", data=form(data), headers=headers)
            assert answer.status_code == status, answer.text
        assert api.get(f"/v1/jobs/{job['id']}").json()["status"] != "canceled"


def test_bulk_form_needs_a_session(service: Service) -> None:
    answer = httpx.post(service.url + "/bulk", data={"action": "cancel", "status": "queued"})
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
