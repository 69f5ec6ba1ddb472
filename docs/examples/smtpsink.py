"""
A local SMTP sink for the mailer example and its tests: Twisted's own
ESMTP server (no extra dependency), keeping every message in memory and
refusing the recipients it is told to refuse.

    python docs/examples/smtpsink.py 2525
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable

from twisted.internet.defer import succeed
from twisted.internet.protocol import ServerFactory
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from zope.interface import implementer


@implementer(IMessageSMTP)
class _Message:
    def __init__(self, sink: Sink, recipient: str) -> None:
        self.sink = sink
        self.recipient = recipient
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> Any:
        self.sink.messages.append((self.recipient, b"\n".join(self.lines)))
        return succeed(None)

    def connectionLost(self) -> None:
        self.lines = []


@implementer(IMessageDelivery)
class _Delivery:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: by the taskd example SMTP sink"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: smtp.User) -> Callable[[], _Message]:
        recipient = str(user.dest)
        if recipient in self.sink.refuse:
            raise smtp.SMTPBadRcpt(user)
        return lambda: _Message(self.sink, recipient)


class Sink(ServerFactory):
    """
    An SMTP server factory that stores what it receives.

    @ivar messages: (recipient, message bytes) for each message accepted.
    @ivar refuse: recipients refused with 550.
    """

    def __init__(self, refuse: Iterable[str] = ()) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.refuse = set(refuse)

    def buildProtocol(self, addr: Any) -> smtp.ESMTP:
        protocol = smtp.ESMTP()
        protocol.factory = self
        protocol.delivery = _Delivery(self)
        return protocol


if __name__ == "__main__":
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    def listening(port: Any) -> None:
        print(f"smtp sink listening on {port.getHost().port}", flush=True)

    TCP4ServerEndpoint(reactor, int(sys.argv[1]), interface="127.0.0.1").listen(Sink()).addCallback(listening)
    reactor.run()
