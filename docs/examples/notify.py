"""
An application's code that mails its users through taskd: the code under
test in docs/testing.md (its tests are test_notify.py, beside it).

It takes any taskd client (a C{TaskClient}, a C{ReconnectingClient}, or a
C{taskd.testing.FakeClient} in tests) and calls two tasks the daemon runs:
C{send_mail(to, subject)}, one mail, and C{send_newsletter(addresses,
issue)}, which reports its progress and returns how many it sent.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from taskd import errors


@define
class Report:
    """
    What became of a mailing.

    @ivar sent: the addresses mailed.
    @ivar failed: why each address that failed was not (or may not have
        been) mailed.
    @ivar retry: the addresses taskd did not take this time (busy, expired,
        stopping, unreachable): nothing was sent to them, try again later.
    """

    sent: list[str] = field(factory=list)
    failed: dict[str, str] = field(factory=dict)
    retry: list[str] = field(factory=list)


def mailUsers(
    client: Any, addresses: Sequence[str], subject: str, *, timeout: float = 30.0
) -> Deferred[Report]:
    """
    Mail every address, one C{send_mail} call each, all at once.

    @param timeout: how long one mail may take, in seconds.
    @return: a C{Deferred} firing with the L{Report} once every call has
        ended.  Cancelling it cancels the calls still running (it then
        fails with C{CancelledError}).
    """
    report = Report()
    calls = [
        client.callWith("send_mail", [address, subject], timeout=timeout).addCallbacks(
            _sent, _notSent, callbackArgs=(report, address), errbackArgs=(report, address)
        )
        for address in addresses
    ]
    mailing: Deferred[Any] = DeferredList(calls, consumeErrors=True)
    return mailing.addCallback(_unlessCancelled, report)


def _sent(result: object, report: Report, address: str) -> None:
    report.sent.append(address)


def _notSent(failure: Failure, report: Report, address: str) -> Failure | None:
    error = failure.value
    if isinstance(error, (errors.PoolBusy, errors.PoolStopping, errors.Expired, errors.NotConnected)):
        report.retry.append(address)
    elif isinstance(error, errors.TaskFailed):
        report.failed[address] = f"refused ({error.remoteType}): {error.message}"
    elif isinstance(error, errors.TaskTimeout):
        report.failed[address] = "timed out (it may have been sent)"
    elif isinstance(error, (errors.WorkerCrashed, errors.WorkerProtocolError)):
        report.failed[address] = "the mailer crashed (it may have been sent)"
    elif isinstance(error, errors.ConnectionLost):
        report.failed[address] = "taskd went away (it may have been sent)"
    elif isinstance(error, errors.TaskdError):
        report.failed[address] = f"{error.type}: {error.message}"
    else:
        return failure  # cancelled, or a bug of ours
    return None


def _unlessCancelled(results: list[tuple[bool, Any]], report: Report) -> Report | Failure:
    for ok, outcome in results:
        if not ok:
            return outcome  # cancelled (or a bug of ours): so is the mailing
    return report


def sendNewsletter(
    client: Any, addresses: Sequence[str], issue: int, onProgress: Callable[[int, int], object]
) -> Deferred[int]:
    """
    Send newsletter C{issue} to every address in one C{send_newsletter}
    call, passing its progress reports on.

    @param onProgress: called with (sent so far, total) as the task reports.
    @return: a C{Deferred} firing with how many were sent.
    """
    d: Deferred[int] = client.callWith(
        "send_newsletter",
        [list(addresses), issue],
        progress=lambda report: onProgress(report["sent"], report["of"]),
    )
    return d
