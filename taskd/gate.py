# -*- test-case-name: tests.test_readiness -*-
"""
Listening before the daemon is ready, without serving: L{ListeningGate}
holds the daemon's listening ports closed to the reactor from the moment
they are bound until the daemon is ready (its jobs' journal open).

A port is bound at start (so that a port in use still stops the daemon at
once, and privileged ports are bound before privileges are dropped), but
not read: the kernel queues new connections in the port's backlog, as a
socket unit of systemd's does while its daemon starts, and the daemon
accepts them once the gate opens.  Meanwhile nothing is answered, so a
balancer's health check that expects the daemon's hello (docs/cluster.md)
fails until the daemon is ready, and no submit is refused for a journal
that is not yet open.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer


class ListeningGate:
    """
    Holds listening ports unread until L{open}.

    @ivar isOpen: whether the gate is open (the daemon is ready).
    @ivar ports: the ports it holds (and held).
    """

    log = Logger()

    def __init__(self) -> None:
        self.isOpen = False
        self.ports: list[IListeningPort] = []

    def hold(self, endpoint: IStreamServerEndpoint) -> IStreamServerEndpoint:
        """
        @return: an endpoint listening as C{endpoint} does, whose port this
            gate holds unread until it opens.
        """
        return _HeldEndpoint(endpoint, self)

    def listening(self, port: IListeningPort) -> IListeningPort:
        """
        C{port} has started listening: stop reading it (accepting
        connections) unless the gate is open.
        """
        self.ports.append(port)
        if not self.isOpen:
            stopReading = getattr(port, "stopReading", None)
            if stopReading is None:
                self.log.warn("cannot hold {port!r} until the daemon is ready", port=port)
            else:
                stopReading()
        return port

    def open(self) -> None:
        """
        The daemon is ready: accept the connections queued meanwhile, and
        new ones.
        """
        if self.isOpen:
            return
        self.isOpen = True
        for port in self.ports:
            # A port stopped meanwhile (the daemon drains) stays stopped.
            if getattr(port, "connected", True) and not getattr(port, "disconnecting", False):
                startReading = getattr(port, "startReading", None)
                if startReading is not None:
                    startReading()


@implementer(IStreamServerEndpoint)
class _HeldEndpoint:
    def __init__(self, endpoint: IStreamServerEndpoint, gate: ListeningGate) -> None:
        self._endpoint = endpoint
        self._gate = gate

    def listen(self, factory: IProtocolFactory) -> Deferred[Any]:
        # Called back in the same turn as the listen, for every endpoint
        # the daemon takes: no connection is accepted before the hold.
        return self._endpoint.listen(factory).addCallback(self._gate.listening)
