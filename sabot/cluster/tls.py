"""TLS for every connection that can carry it: HTTP, the workers' WebSocket, the data plane.

One setting for the whole cluster, as Flink's internal SSL is: every process has a
certificate (``cert_file`` + ``key_file``) signed by a CA every process trusts
(``ca_file``). Servers present their certificate and clients verify it against the CA
and the address they dialled (so a certificate must name the host or IP each process is
reached at). With ``mutual`` the servers require a client certificate from the same CA
too, so only cluster members (and clients given a certificate) can even open a
connection; the cluster secret is still checked on top.

The heartbeat connection stays plain TCP: its beats come from a native thread that never
takes the GIL, and it carries no secret (the worker proves its registration ticket with
an HMAC, see :mod:`sabot.cluster.liveness`).

From the environment (how LocalCluster and ``sabot`` commands pass it on):
``SABOT_TLS_CERT``, ``SABOT_TLS_KEY``, ``SABOT_TLS_CA``, ``SABOT_TLS_MUTUAL=1``.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from dataclasses import dataclass

from sabot.errors import InvalidRequest

__all__ = ["TlsConfig"]

ENV = {"cert_file": "SABOT_TLS_CERT", "key_file": "SABOT_TLS_KEY", "ca_file": "SABOT_TLS_CA"}
MUTUAL_ENV = "SABOT_TLS_MUTUAL"


@dataclass(frozen=True)
class TlsConfig:
    """Certificates of one cluster process.

    Attributes:
        cert_file: this process's certificate (chain), PEM.
        key_file: its private key, PEM (readable by its owner only).
        ca_file: the CA certificate(s) every cluster member's certificate is signed by.
        mutual: servers also require a client certificate signed by ``ca_file``.
    """

    cert_file: str
    key_file: str
    ca_file: str
    mutual: bool = False

    def __post_init__(self):
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, name)
            if not isinstance(path, str) or not path:
                raise InvalidRequest(f"tls.{name} must be a file path, got {path!r}")
            if not os.path.isfile(path):
                raise InvalidRequest(f"tls.{name}: no file {path}")
        if not isinstance(self.mutual, bool):
            raise InvalidRequest(f"tls.mutual must be true or false, got {self.mutual!r}")

    @classmethod
    def coerce(cls, value):
        """None, a TlsConfig, or a dict of its fields."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise InvalidRequest(f"unknown tls setting(s) {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise InvalidRequest(f"tls must be None, a TlsConfig or a dict, got {type(value).__name__}")

    @classmethod
    def from_env(cls, environ=None):
        """The TlsConfig ``$SABOT_TLS_*`` describe, or None when they are not set."""
        environ = os.environ if environ is None else environ
        values = {name: environ.get(var) for name, var in ENV.items()}
        if not any(values.values()):
            return None
        missing = [ENV[n] for n, v in values.items() if not v]
        if missing:
            raise InvalidRequest(f"TLS needs {', '.join(ENV.values())}; missing {', '.join(missing)}")
        return cls(**values, mutual=environ.get(MUTUAL_ENV, "") in ("1", "true", "yes"))

    def to_env(self):
        env = {var: getattr(self, name) for name, var in ENV.items()}
        env[MUTUAL_ENV] = "1" if self.mutual else "0"
        return env

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if self.mutual else ssl.CERT_NONE
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)  # presented when the server asks
        return ctx


def scheme(tls):
    return "https" if tls is not None else "http"
