"""
taskd's Twisted plugins: the C{twistd taskd} command and the C{mtls:}
server endpoint.  Each only points at code in the C{taskd} package, which
is imported when the plugin is used, not when plugins are listed.
"""

from typing import Any

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

taskd = ServiceMaker(
    "taskd",
    "taskd.tap",
    "A task daemon: run registered Python tasks in worker processes over JSON lines.",
    "taskd",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _MutualTLS:
    prefix = "mtls"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from taskd.tls import MutualTLSServerParser

        return MutualTLSServerParser().parseStreamServer(reactor, *args, **kwargs)


mtls = _MutualTLS()
