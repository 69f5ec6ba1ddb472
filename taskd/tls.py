# -*- test-case-name: tests.test_security -*-
"""
Mutual TLS for the daemon: the C{mtls:} server endpoint::

    twistd -n taskd --listen mtls:12345:privateKey=key.pem:certKey=cert.pem:caCerts=clients-ca.pem

is Twisted's C{ssl:} endpoint that also demands a client certificate
chaining to one of the CA certificates in C{caCerts} (a PEM file holding
one or more).  Clients connect with a C{tls:} endpoint that names their
C{certificate} and C{privateKey}.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from twisted.python.filepath import FilePath
from zope.interface import implementer

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def loadCertificates(path: str) -> list[ssl.Certificate]:
    """
    @return: every certificate in the PEM file at C{path}.
    @raise ValueError: if there is none.
    """
    found = _PEM_CERT.findall(FilePath(path).getContent())
    if not found:
        raise ValueError(f"{path} holds no PEM certificate")
    return [ssl.Certificate.loadPEM(pem) for pem in found]


def mutualTLSOptions(privateKey: str, certKey: str, caCerts: str) -> Any:
    """
    TLS options for a server that requires a client certificate issued by
    one of C{caCerts}.
    """
    ours = ssl.PrivateCertificate.loadPEM(
        FilePath(certKey).getContent() + b"\n" + FilePath(privateKey).getContent()
    )
    return ssl.CertificateOptions(
        privateKey=ours.privateKey.original,
        certificate=ours.original,
        # A trust root makes the server demand and verify a client
        # certificate.
        trustRoot=ssl.trustRootFromCertificates(loadCertificates(caCerts)),
    )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """
    Parses C{mtls:PORT:privateKey=...:certKey=...:caCerts=...[:interface=...]
    [:backlog=...]}.
    """

    prefix = "mtls"

    def parseStreamServer(  # type: ignore[override]
        self,
        reactor: Any,
        port: str,
        privateKey: str = "",
        certKey: str = "",
        caCerts: str = "",
        interface: str = "",
        backlog: str = "50",
    ) -> IStreamServerEndpoint:
        if not (privateKey and certKey and caCerts):
            raise ValueError("mtls: needs privateKey=, certKey= and caCerts=")
        return SSL4ServerEndpoint(
            reactor,
            int(port),
            mutualTLSOptions(privateKey, certKey, caCerts),
            backlog=int(backlog),
            interface=interface,
        )
