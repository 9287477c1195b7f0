"""The filter on Prefect's concurrency logger (flows/product_update.py `_FullLimitNotAnError`) drops
only the ERROR line of an ask refused because the cluster limit is full (HTTP 423): every other
failure an SRE must see (a 500, a 401, a missing limit, the API unreachable) is still logged, and a
record with odd arguments passes untouched instead of breaking the logging call (adversarial pass
adv34)."""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any

import httpx
import pytest

from flows.product_update import _FullLimitNotAnError, _quiet_full_limit

MSG = "Service %r failed to process item %r"
SERVICE = "ConcurrencySlotAcquisitionWithLeaseService"


def _http_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/increment-with-lease")
    response = httpx.Response(status, request=request, headers={"Retry-After": "2.0"})
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


def _failed(exc: BaseException) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_exception(exc)
    return future


def _wrapped(exc: BaseException) -> Exception:
    """As Prefect's aacquire_concurrency_slots_with_lease raises it: `... from exc`."""
    try:
        raise RuntimeError("Unable to acquire concurrency slots") from exc
    except RuntimeError as outer:
        return outer


def _record(msg: Any, args: Any) -> logging.LogRecord:
    return logging.LogRecord("prefect._internal.concurrency", logging.ERROR, __file__, 1, msg, args, None)


def _item(future: Any) -> tuple[Any, ...]:
    return (1, "concurrency", None, 0, 300, True, None, future)


def test_only_a_full_limit_is_dropped() -> None:
    keep = _FullLimitNotAnError().filter
    assert not keep(_record(MSG, (SERVICE, _item(_failed(_http_error(423))))))
    assert not keep(_record(MSG, (SERVICE, _item(_failed(_wrapped(_http_error(423)))))))


@pytest.mark.parametrize(
    "exc",
    [
        _http_error(500),
        _http_error(401),
        _http_error(403),
        _http_error(404),
        _http_error(422),  # the limit's size set to 0
        _wrapped(_http_error(500)),
        _wrapped(_http_error(404)),
        httpx.ConnectError("All connection attempts failed"),
        httpx.ReadTimeout("timed out"),
        _wrapped(httpx.ConnectError("All connection attempts failed")),
        RuntimeError("anything else"),
    ],
    ids=repr,
)
def test_every_other_failure_is_still_logged(exc: BaseException) -> None:
    assert _FullLimitNotAnError().filter(_record(MSG, (SERVICE, _item(_failed(exc)))))


def test_a_full_limit_of_another_service_or_message_is_still_logged() -> None:
    full = _item(_failed(_http_error(423)))
    keep = _FullLimitNotAnError().filter
    assert keep(_record(MSG, ("SomeOtherService", full)))
    assert keep(_record("Service %r handling item %r", (SERVICE, full)))


class _Hostile:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")

    __hash__ = object.__hash__

    def __len__(self) -> int:
        raise RuntimeError("no len either")


pending: concurrent.futures.Future[Any] = concurrent.futures.Future()
cancelled: concurrent.futures.Future[Any] = concurrent.futures.Future()
cancelled.cancel()
succeeded: concurrent.futures.Future[Any] = concurrent.futures.Future()
succeeded.set_result(httpx.Response(200))


@pytest.mark.parametrize(
    "msg,args",
    [
        (MSG, None),
        (MSG, ()),
        (MSG, {"service": SERVICE, "item": None}),
        (MSG, (SERVICE,)),
        (MSG, (SERVICE, None)),
        (MSG, (SERVICE, ())),
        (MSG, (SERVICE, "not an item")),
        (MSG, (SERVICE, _item(pending))),
        (MSG, (SERVICE, _item(cancelled))),
        (MSG, (SERVICE, _item(succeeded))),
        (MSG, (SERVICE, _item(_Hostile()))),
        (MSG, (_Hostile(), _item(_failed(_http_error(423))))),
        (MSG, (SERVICE, _item(_failed(_http_error(423))), "extra")),
        (_Hostile(), (SERVICE, _item(_failed(_http_error(423))))),
        (None, None),
        (42, (1, 2)),
    ],
)
def test_odd_records_pass_untouched(msg: Any, args: Any) -> None:
    assert _FullLimitNotAnError().filter(_record(msg, args)) is True


def test_installed_once_on_prefects_logger_and_quiet_only_for_a_full_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect._internal.concurrency import logger

    _quiet_full_limit()
    _quiet_full_limit()
    assert sum(isinstance(f, _FullLimitNotAnError) for f in logger.filters) == 1
    with caplog.at_level(logging.ERROR, logger=logger.name):
        logger.error(MSG, SERVICE, _item(_failed(_http_error(423))))
        logger.error(MSG, SERVICE, _item(_failed(_http_error(500))))
        logger.error(MSG, SERVICE, _item(_Hostile()))
    seen = [r for r in caplog.records if r.name == logger.name]
    assert len(seen) == 2
    assert seen[0].args[1][-1].exception().response.status_code == 500  # type: ignore[index]


def test_no_cluster_limit_no_query_no_request_no_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet benchmark's path (UPKEEP_CLUSTER_LIMIT unset): the slot is "" at once, with no read
    of the run (the engine is never touched), no ask to Prefect and no filter installed."""
    from types import SimpleNamespace

    import prefect.concurrency.sync
    from prefect._internal.concurrency import logger

    from flows.product_update import cluster_slot

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the engine was used: {name}")

    def no_ask(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Prefect was asked for a slot")

    monkeypatch.setattr(prefect.concurrency.sync, "concurrency", no_ask)
    monkeypatch.setattr(logger, "filters", [])
    runtime = SimpleNamespace(cluster_limit="", engine=Untouchable(), slot_poll=0.0)
    with cluster_slot(runtime, 1, "owner") as stop:  # type: ignore[arg-type]
        assert stop == ""
    assert logger.filters == []
