"""Every built-in app's OpenAPI documents hold under Schemathesis, with auth off and on.

The server is the real gateway on real sockets (a run listener and a ``--queue-port``
listener); the diffusion apps run on a runner that paints flat images
(:mod:`tests.gateway.flat_diffusion`), so any input their documents allow answers at once.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from framewire.engine.api import App, InputError, endpoint
from framewire.gateway.settings import Settings
from tests.conftest import free_port, live_surfaces, serve_process
from tests.gateway.conformance import check_apps
from tests.gateway.flat_diffusion import builtin_apps

KEY = "conformance:secret-key"


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_every_builtin_app_document_holds_under_schemathesis(auth: bool) -> None:
    # Webhooks go to a receiver on this machine; without a network nothing else could take them.
    settings = Settings(private_networks=True, auth=auth, api_keys=(KEY,) if auth else ())
    apps = builtin_apps()
    with live_surfaces(settings, apps) as (run, queue):
        reports = check_apps(run, queue, [app.app_id for app in apps], key=KEY if auth else None)
    print("\n".join(report.problems() for report in reports))
    problems = [report.problems() for report in reports if not report.ok]
    assert not problems, "\n\n".join(problems)
    for report in reports:
        assert 200 in report.statuses and report.accepted_positive, f"no request got through: {report.summary()}"
        assert report.operations and report.cases >= 50, report.summary()
    if auth:
        assert all(401 in report.statuses for report in reports)  # requests without the key were refused


def test_an_app_added_with_app_gets_the_same_run() -> None:
    queue_port = free_port()
    with serve_process(
        "--builtin-apps", "", "--app", "tests.gateway.shapes_app:ShapesApp",
        "--queue-port", str(queue_port), "--private-networks",
    ) as port:  # fmt: skip
        reports = check_apps(f"127.0.0.1:{port}", f"127.0.0.1:{queue_port}", ["test/shapes"])
    print("\n".join(report.problems() for report in reports))
    problems = [report.problems() for report in reports if not report.ok]
    assert not problems, "\n\n".join(problems)
    run, queue = reports
    assert {"POST /test/shapes", "GET /test/shapes", "POST /test/shapes/box"} <= run.operations
    assert "GET /test/shapes/box" not in run.operations  # a required object field: no GET run
    # (A queued request's status may already be COMPLETED when read, so 202 is not asked for.)
    assert {200, 405, 422} <= run.statuses.keys() and {200, 404} <= queue.statuses.keys()


class Pick(BaseModel):
    n: int = Field(0, ge=0, le=10)


class Picked(BaseModel):
    n: int


class StricterApp(App):
    """Refuses inputs its document allows (n over 3): what the run must catch."""

    app_id = "test/stricter"

    @endpoint("/")
    def run(self, inp: Pick) -> Picked:
        if inp.n > 3:
            raise InputError("n: at most 3", field="n")
        return Picked(n=inp.n)


def test_a_document_that_allows_what_the_server_refuses_is_caught() -> None:
    with live_surfaces(Settings(), [StricterApp()]) as (run, queue):
        reports = check_apps(run, queue, ["test/stricter"], max_examples=5)
    run_report = reports[0]
    print(run_report.problems())
    assert not run_report.ok
    assert any("positive_data_acceptance" in failure for failure in run_report.failures), run_report.problems()
    assert any(where.endswith("-> 422") for where in run_report.refused_positive), run_report.problems()
