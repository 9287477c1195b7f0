"""adv61: upkeep/deploy.py `prefect_error` (what the operator is shown of a failing `prefect deploy`)
given what a hostile proxy or Prefect may print: credentials of PREFECT_API_URL spelled otherwise than in
the URL (a query token, a percent-encoded password decoded, the Basic token of its userinfo), terminal
escapes, a forged traceback, a flood of lines. Pure: the function's input is Prefect's stdout/stderr."""

from __future__ import annotations

import base64

import pytest

from upkeep.deploy import ERROR_LINES, prefect_error


def _said(stderr: str, api: str) -> str:
    return "\n".join(prefect_error("An exception occurred.\n", stderr, api))


@pytest.mark.parametrize(
    ("api", "echoed"),
    [
        ("http://127.0.0.1:4200/api?token=q7TokenSecret", "q7TokenSecret"),
        ("http://127.0.0.1:4200/api?access_token=q7TokenSecret&x=1", "q7TokenSecret"),
        ("http://sre:p%40ss%2Fw0rd@127.0.0.1:4200/api", "p@ss/w0rd"),
        ("http://sre:p%40ss%2Fw0rd@127.0.0.1:4200/api", base64.b64encode(b"sre:p@ss/w0rd").decode()),
        ("http://sre:plainPW99@127.0.0.1:4200/api", base64.b64encode(b"sre:plainPW99").decode()),
    ],
)
def test_a_credential_of_prefect_api_url_a_proxy_echoes_is_masked(api: str, echoed: str) -> None:
    """A proxy's refusal that Prefect quotes (`Response: {'detail': ...}`) names the credential it was
    sent, as it received it: the query's token, the password decoded, or the Basic token httpx made of
    the userinfo. Only the URL's own spelling was masked."""
    stderr = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "prefect.exceptions.PrefectHTTPStatusError: Client error '401' - "
        f"Response: {{'detail': 'bad {echoed}'}}\n"
    )
    said = _said(stderr, api)
    print(said)
    assert echoed not in said, said


def test_terminal_escapes_in_prefects_error_are_shown_escaped() -> None:
    stderr = "Error: \x1b]0;owned\x07title \x1b[2J cleared \x9b31m c1 \u202eevil\n"
    said = _said(stderr, "http://127.0.0.1:4200/api")
    assert not any(ch in said for ch in "\x1b\x07\x9b\u202e"), repr(said)


def test_a_flood_of_lines_is_at_most_error_lines() -> None:
    stderr = "".join(f"ValueError: line {n}\n" for n in range(1000))
    said = prefect_error("", stderr, "http://127.0.0.1:4200/api")
    assert len(said) <= ERROR_LINES and all(len(line) < 400 for line in said), said


def test_an_api_answering_the_same_full_page_at_every_offset_is_refused_not_read_for_ever() -> None:
    """prefect_server.deployments_filtered pages until a short page: a cache in front of the API that
    ignores `offset` answers 200 deployments for ever. Refused as not Prefect's, naming the path."""
    import httpx

    from upkeep.prefect_server import PAGE, NotPrefects, deployments_filtered

    asked: list[int] = []

    def same_page(request: httpx.Request) -> httpx.Response:
        import json

        asked.append(json.loads(request.content)["offset"])
        return httpx.Response(200, json=[{"name": f"d{n}", "id": str(n)} for n in range(PAGE)])

    http = httpx.Client(base_url="http://127.0.0.1:9/api/", transport=httpx.MockTransport(same_page))
    with http, pytest.raises(NotPrefects, match="deployments/filter with the same 200 deployments"):
        deployments_filtered(http, {})
    assert asked == [0, PAGE]
