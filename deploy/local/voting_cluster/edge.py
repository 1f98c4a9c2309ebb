"""The edge node: Traefik terminating HTTPS for the vote and result hosts.

Its certificates come over real HTTP-01 from a local Pebble, the way Let's Encrypt issues them
in production: Pebble looks the host names up in pebble-challtestsrv (which answers every name
with the edge's address) and fetches the challenge token from Traefik's port 80. All three run
on the edge node; the checks here run from this machine's end of the bridge, as a client would.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

from . import templates, topology
from .cluster import Cluster
from .hosts import Host, sh, wait_until
from .topology import EDGE, Ports

TRAEFIK_TEMPLATE = topology.DEPLOY / "traefik" / "traefik.yml"
DYNAMIC_TEMPLATES = topology.DEPLOY / "traefik" / "dynamic"
PEBBLE_TEMPLATE = topology.DEPLOY / "local" / "pebble" / "pebble-config.json"

HOST_NAMES = (topology.VOTE_HOST, topology.RESULT_HOST)
ACME_EMAIL = "acme@voting.test"
# Traefik's read-only API, on loopback inside the edge namespace (see traefik.yml).
TRAEFIK_API_PORT = 8091
# pebble-challtestsrv cannot switch its management API off (an empty address binds :80, which
# Traefik needs), so it stays on loopback.
CHALLTESTSRV_MANAGEMENT = "127.0.0.1:8055"
# Per client address, and a load test sends ~300 votes/s from this machine's single address:
# generous enough for that, still there to be exercised.
RATE_LIMIT_AVERAGE = 1000
RATE_LIMIT_BURST = 2000

# Traefik's API listens on the edge's loopback only, so it is asked from inside the edge's
# namespace, by the Python running this module (curl is not among the cluster's dependencies).
_PRINT_URL = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
sys.stdout.write(opener.open(sys.argv[1], timeout=2).read().decode())
"""

STARTUP_TIMEOUT = 30
ISSUANCE_TIMEOUT = 90
PROBE_TIMEOUT = 2


@dataclass(frozen=True)
class EdgeFiles:
    """What the edge keeps in the cluster directory."""

    dir: Path

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def listener_ca(self) -> Path:
        """The small CA behind Pebble's own HTTPS listeners (not the CA that issues for us)."""
        return self.pki / "pebble-listener-ca.pem"

    @property
    def listener_ca_key(self) -> Path:
        return self.pki / "pebble-listener-ca.key"

    @property
    def listener_cert(self) -> Path:
        return self.pki / "pebble-listener.pem"

    @property
    def listener_key(self) -> Path:
        return self.pki / "pebble-listener.key"

    @property
    def issuing_root(self) -> Path:
        """Pebble's issuing root: what clients of the edge trust."""
        return self.dir / "pebble-root.pem"

    @property
    def pebble_config(self) -> Path:
        return self.dir / "pebble-config.json"

    @property
    def traefik_config(self) -> Path:
        return self.dir / "traefik.yml"

    @property
    def dynamic_dir(self) -> Path:
        return self.dir / "dynamic"

    @property
    def acme_storage(self) -> Path:
        return self.dir / "acme.json"


# An X.509 name as the ssl module decodes it: relative distinguished names of (key, value).
_X509Name = tuple[tuple[tuple[str, str], ...], ...]


@dataclass(frozen=True)
class ServedCertificate:
    """The certificate the edge presents for one host name, verified against Pebble's root."""

    sha256: str
    serial: str
    issuer: str
    not_after: str


# -- the API ------------------------------------------------------------------------------

def start(cluster: Cluster, vote_backends: list[str], result_backends: list[str]) -> None:
    """DNS responder, Pebble, then Traefik; returns once both hosts serve Pebble-issued certificates.

    Backends are base URLs such as `http://10.89.0.41:8080`.
    """
    edge = cluster.host(EDGE)
    files = _files(cluster)
    _ensure_listener_certificate(files)
    _start_dns(edge)
    _start_pebble(edge, files)
    _save_issuing_root(files)
    # A fresh Pebble has a fresh root and knows no account: whatever acme.json holds is void.
    files.acme_storage.unlink(missing_ok=True)
    _render_traefik_config(files, vote_backends, result_backends)
    started = time.monotonic()
    _start_traefik(edge, files)
    print(f"edge: certificates for {', '.join(HOST_NAMES)} issued by Pebble and served "
          f"{time.monotonic() - started:.1f} s after Traefik started", flush=True)


def stop(cluster: Cluster) -> None:
    """Stops Traefik, Pebble and the DNS responder; their files stay for the next start."""
    edge = cluster.host(EDGE)
    for name in ("traefik", "pebble", "challtestsrv"):
        edge.stop(name)


def restart_traefik(cluster: Cluster) -> float:
    """Stops and starts Traefik on the same acme.json; seconds from the stop until both hosts
    serve HTTPS again.

    Only the certificates' fingerprints tell whether the stored ones were reused: a new issuance
    would be served, and verified, just the same.
    """
    edge = cluster.host(EDGE)
    began = time.monotonic()
    edge.stop("traefik")
    _start_traefik(edge, _files(cluster))
    return time.monotonic() - began


def ca_bundle(cluster: Cluster) -> Path:
    """Pebble's issuing root as PEM: the CA a client of the edge (`voting load --ca-cert`) trusts."""
    files = _files(cluster)
    if not files.issuing_root.exists():
        _save_issuing_root(files)
    return files.issuing_root


def served_certificate(cluster: Cluster, host_name: str) -> str:
    """SHA-256 fingerprint of the certificate served for `host_name`; raises unless Pebble issued it."""
    return _fetch_certificate(host_name, ca_bundle(cluster)).sha256


def vote_url() -> str:
    return f"https://{topology.VOTE_HOST}"


def result_url() -> str:
    return f"https://{topology.RESULT_HOST}"


def resolve_args() -> list[str]:
    """`HOST:ADDR` for every public host name, each the value of one `--resolve` (no DNS on
    this machine knows the names)."""
    return [f"{name}:{EDGE.ip}" for name in HOST_NAMES]


def load_args(cluster: Cluster) -> list[str]:
    """What `voting load` needs to vote through the edge and verify: both URLs, Pebble's root
    to trust, and the host names pinned to the edge."""
    resolve = [arg for pair in resolve_args() for arg in ("--resolve", pair)]
    return ["--url", vote_url(), "--verify", result_url(), "--ca-cert", str(ca_bundle(cluster)), *resolve]


def status_lines(cluster: Cluster) -> list[str]:
    edge = cluster.host(EDGE)
    lines = [_process_line(edge, name) for name in ("challtestsrv", "pebble", "traefik")]
    if edge.alive("traefik"):
        lines.append(_ping_line())
        lines += [_certificate_line(name, _files(cluster).issuing_root) for name in HOST_NAMES]
        lines += _backend_lines(edge)
    return lines


def _files(cluster: Cluster) -> EdgeFiles:
    return EdgeFiles(cluster.host(EDGE).dir)


# -- Pebble and its DNS -------------------------------------------------------------------

def _ensure_listener_certificate(files: EdgeFiles) -> None:
    """A small CA, and the certificate it signs for Pebble's HTTPS listeners; once per cluster.

    Debian's Pebble ships no test certificates. Traefik trusts this CA for the ACME directory,
    and this module for the management API.
    """
    if files.listener_cert.exists():
        return
    files.pki.mkdir(parents=True, exist_ok=True)
    new_p256_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc"]
    sh(["openssl", "req", "-x509", *new_p256_key, "-days", "3650",
        "-subj", "/CN=Voting cluster ACME listener CA",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(files.listener_ca_key), "-out", str(files.listener_ca)])
    # Traefik (on the edge) and this machine (over the bridge) both dial the edge's address.
    sh(["openssl", "req", "-x509", *new_p256_key, "-days", "825", "-subj", "/CN=pebble",
        "-CA", str(files.listener_ca), "-CAkey", str(files.listener_ca_key),
        "-addext", f"subjectAltName=IP:{EDGE.ip}",
        "-addext", "extendedKeyUsage=serverAuth",
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-keyout", str(files.listener_key), "-out", str(files.listener_cert)])


def _start_dns(edge: Host) -> None:
    """pebble-challtestsrv as a DNS server only, answering every A query with the edge's address."""
    edge.spawn("challtestsrv", [
        "pebble-challtestsrv",
        "-defaultIPv4", EDGE.ip,
        "-defaultIPv6", "",  # no AAAA answers (the default is ::1, which is not the edge)
        "-dns01", f"127.0.0.1:{Ports.DNS}",
        "-http01", "", "-https01", "", "-tlsalpn01", "",
        "-management", CHALLTESTSRV_MANAGEMENT,
    ])
    _wait_while_running(edge, "challtestsrv", lambda: _listening_udp(edge, Ports.DNS),
                        STARTUP_TIMEOUT, "pebble-challtestsrv to listen for DNS")


def _start_pebble(edge: Host, files: EdgeFiles) -> None:
    templates.render(PEBBLE_TEMPLATE, files.pebble_config, {
        "ACME_PORT": Ports.ACME,
        "ACME_MANAGEMENT_PORT": Ports.ACME_MANAGEMENT,
        "PEBBLE_CERTIFICATE": files.listener_cert,
        "PEBBLE_PRIVATE_KEY": files.listener_key,
        # HTTP-01 is validated on port 80 of the name being certified, as Let's Encrypt does.
        "HTTP_PORT": Ports.HTTP,
        "HTTPS_PORT": Ports.HTTPS,
    })
    edge.spawn(
        "pebble",
        ["pebble", "-config", str(files.pebble_config), "-dnsserver", f"127.0.0.1:{Ports.DNS}"],
        # No random 0-15 s sleep before each validation; no randomly rejected nonces: both
        # exist to exercise client retries, here they only slow the cluster down.
        env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
    )
    _wait_while_running(edge, "pebble", lambda: bool(_http_get(_acme_directory_url(), files.listener_ca)),
                        STARTUP_TIMEOUT, "Pebble's ACME directory")


def _save_issuing_root(files: EdgeFiles) -> None:
    """Pebble makes a new root at every start: fetch the running one's from the management API."""
    url = f"https://{EDGE.ip}:{Ports.ACME_MANAGEMENT}/roots/0"
    root = wait_until(lambda: _http_get(url, files.listener_ca), STARTUP_TIMEOUT, "Pebble's issuing root")
    files.issuing_root.write_bytes(root)


def _acme_directory_url() -> str:
    return f"https://{EDGE.ip}:{Ports.ACME}/dir"


# -- Traefik ------------------------------------------------------------------------------

def _render_traefik_config(files: EdgeFiles, vote_backends: list[str], result_backends: list[str]) -> None:
    templates.render(TRAEFIK_TEMPLATE, files.traefik_config, {
        "ACME_EMAIL": ACME_EMAIL,
        "ACME_STORAGE": files.acme_storage,
        "ACME_CA_SERVER": _acme_directory_url(),
        "ACME_CA_CERTIFICATES": files.listener_ca,
        "TRAEFIK_DYNAMIC_DIR": files.dynamic_dir,
        "TRAEFIK_PING_PORT": Ports.TRAEFIK_PING,
        "TRAEFIK_API_PORT": TRAEFIK_API_PORT,
    })
    templates.render(DYNAMIC_TEMPLATES / "middlewares.yml", files.dynamic_dir / "middlewares.yml", {
        "RATE_LIMIT_AVERAGE": RATE_LIMIT_AVERAGE,
        "RATE_LIMIT_BURST": RATE_LIMIT_BURST,
    })
    templates.render(DYNAMIC_TEMPLATES / "routes.yml", files.dynamic_dir / "routes.yml", {
        "VOTE_HOST": topology.VOTE_HOST,
        "RESULT_HOST": topology.RESULT_HOST,
        "VOTE_SERVERS": _servers_yaml(vote_backends),
        "RESULT_SERVERS": _servers_yaml(result_backends),
    })


def _servers_yaml(backends: list[str]) -> str:
    # A JSON array is a YAML flow sequence: one line, no indentation to get right.
    return json.dumps([{"url": url} for url in backends])


def _start_traefik(edge: Host, files: EdgeFiles) -> None:
    """Starts Traefik; returns once both host names serve certificates issued by Pebble."""
    edge.spawn("traefik", ["traefik", f"--configFile={files.traefik_config}"])
    _wait_while_running(edge, "traefik", lambda: _serving_certificates(files), ISSUANCE_TIMEOUT,
                        f"Traefik to serve Pebble-issued certificates for {', '.join(HOST_NAMES)}")


def _serving_certificates(files: EdgeFiles) -> bool:
    # Until its certificate is issued, Traefik presents a self-signed default one: verification
    # fails, and wait_until counts the error as "not yet".
    return all(_fetch_certificate(name, files.issuing_root) for name in HOST_NAMES)


# -- probes -------------------------------------------------------------------------------

def _fetch_certificate(host_name: str, trusted_root: Path) -> ServedCertificate:
    """TLS handshake with the edge for `host_name` (SNI), verifying chain and name against `trusted_root`."""
    context = ssl.create_default_context(cafile=str(trusted_root))
    with socket.create_connection((EDGE.ip, Ports.HTTPS), timeout=PROBE_TIMEOUT) as connection:
        with context.wrap_socket(connection, server_hostname=host_name) as tls:
            der, fields = tls.getpeercert(binary_form=True), tls.getpeercert()
    if not der or not fields:  # only without verification, which this context requires
        raise ssl.SSLError(f"{host_name}: the edge presented no certificate")
    digest = hashlib.sha256(der).hexdigest().upper()
    issuer = dict(pair for rdn in cast(_X509Name, fields["issuer"]) for pair in rdn)
    return ServedCertificate(
        sha256=":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
        serial=str(fields["serialNumber"]),
        issuer=issuer.get("commonName", "?"),
        not_after=str(fields["notAfter"]),
    )


def _http_get(url: str, trusted_ca: Path | None = None) -> bytes:
    # No proxy from the environment: the cluster's addresses exist on this machine only.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if trusted_ca is not None:
        context = ssl.create_default_context(cafile=str(trusted_ca))
        handlers.append(urllib.request.HTTPSHandler(context=context))
    with urllib.request.build_opener(*handlers).open(url, timeout=PROBE_TIMEOUT) as response:
        body: bytes = response.read()
    return body


def _listening_udp(host: Host, port: int) -> bool:
    return bool(host.run(["ss", "-H", "-l", "-n", "-u", f"sport = :{port}"]).stdout.strip())


def _wait_while_running(host: Host, name: str, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls `ready` like wait_until, but gives up at once if the process has exited meanwhile."""
    exited = object()  # truthy: ends the polling as readiness would
    # Aliveness first: a dead server's probe only ever raises, which wait_until reads as "not yet".
    if wait_until(lambda: exited if not host.alive(name) else ready(), timeout, what) is exited:
        raise RuntimeError(f"{host.name}/{name} exited while waiting for {what}; see {host.log_file(name)}")


# -- status -------------------------------------------------------------------------------

def _process_line(edge: Host, name: str) -> str:
    state = f"running (pid {edge.pid(name)})" if edge.alive(name) else "not running"
    return f"{edge.name}/{name}: {state}"


def _ping_line() -> str:
    try:
        answer = _http_get(f"http://{EDGE.ip}:{Ports.TRAEFIK_PING}/ping").decode().strip()
    except OSError as error:
        return f"traefik ping: no answer ({error})"
    return f"traefik ping: {answer}"


def _certificate_line(host_name: str, issuing_root: Path) -> str:
    try:
        certificate = _fetch_certificate(host_name, issuing_root)
    except OSError as error:  # ssl.SSLError included: not issued yet, or not by this Pebble
        return f"{host_name}: no certificate issued by Pebble ({error})"
    return (f"{host_name}: issued by {certificate.issuer}, serial {certificate.serial}, "
            f"expires {certificate.not_after}")


def _backend_lines(edge: Host) -> list[str]:
    """Each service's replicas, up or down as Traefik's health checks see them."""
    api = f"http://127.0.0.1:{TRAEFIK_API_PORT}/api/http/services"
    answer = edge.run([sys.executable, "-c", _PRINT_URL, api], check=False)
    if answer.returncode != 0:
        error = answer.stderr.strip().splitlines() or [f"exit status {answer.returncode}"]
        return [f"traefik API: no answer ({error[-1]})"]
    return [_service_line(service) for service in json.loads(answer.stdout)
            if service.get("provider") == "file" and "serverStatus" in service]


def _service_line(service: dict[str, Any]) -> str:
    servers = sorted(service["serverStatus"].items())
    return f"{service['name']}: " + ", ".join(f"{url} {state}" for url, state in servers)
