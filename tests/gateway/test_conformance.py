"""Every built-in app's OpenAPI documents hold under Schemathesis, with auth off and on.

The server is the real gateway on real sockets (a run listener and a ``--queue-port``
listener); the diffusion apps run on a runner that paints flat images
(:mod:`tests.gateway.flat_diffusion`), so any input their documents allow answers at once.
"""

from __future__ import annotations

import pytest

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
    problems = [report.problems() for report in reports if report.failures or report.errors or report.timed_out]
    assert not problems, "\n\n".join(problems)
    for report in reports:
        assert 200 in report.statuses, f"no request got through: {report.summary()}"
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
    problems = [report.problems() for report in reports if report.failures or report.errors or report.timed_out]
    assert not problems, "\n\n".join(problems)
    run, queue = reports
    assert {"POST /test/shapes", "GET /test/shapes", "POST /test/shapes/box"} <= run.operations
    assert "GET /test/shapes/box" not in run.operations  # a required object field: no GET run
    # (A queued request's status may already be COMPLETED when read, so 202 is not asked for.)
    assert {200, 405, 422} <= run.statuses.keys() and {200, 404} <= queue.statuses.keys()
