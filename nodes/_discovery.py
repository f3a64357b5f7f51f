"""Where join seeds come from besides ``--join``: mDNS/DNS-SD on the local network, and DNS names.

* ``--mdns``: the node registers ``NAME._wasm-migrate._tcp.local.`` with
  its name and role in the TXT record (python-zeroconf), browses the same
  type, and takes every address it finds as a join seed.  A node listening
  on loopback advertises and browses on loopback only (multicast there
  works without the interface's MULTICAST flag when zeroconf binds to
  127.0.0.1), any other on every interface.
* ``--join-dns NAME``: every refresh interval the node resolves NAME's SRV
  records (target and port each) or, if it has none, its A and AAAA
  records with the node's own listen port (a Kubernetes headless service
  gives one A record per pod), with dnspython's resolver
  (``/etc/resolv.conf``, or ``nameserver`` for a test's server).

A seed found either way is dialled through ``Node.learn_peer`` like a
``--join`` address: TLS (the cluster CA) decides whether it is trusted, and
an ``--insecure`` node takes loopback addresses only.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.exception
import trio
from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from ._config import Address
from ._tls import is_loopback

if TYPE_CHECKING:
    from ._node import Node

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_wasm-migrate._tcp.local."
#: How long one mDNS lookup of a found service's address may take.
RESOLVE_TIMEOUT_MS = 1500


class MdnsAdvert:
    """One registered service and a browser of the same type; blocking methods: run them in a thread."""

    def __init__(self, name: str, role: str, address: Address) -> None:
        loopback = is_loopback(address.host)
        self.zeroconf = Zeroconf(interfaces=["127.0.0.1"] if loopback else InterfaceChoice.All,
                                 ip_version=IPVersion.V4Only)
        host = "127.0.0.1" if address.host == "localhost" else address.host
        try:
            addresses = [socket.inet_aton(host)]
        except OSError:  # a host name: zeroconf advertises the interfaces' addresses
            addresses = None
        self.info = ServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", addresses=addresses, port=address.port,
                                properties={"name": name, "role": role}, server=f"{name}.local.")
        self.found: set[str] = set()
        self.zeroconf.register_service(self.info, allow_name_change=True)
        self.browser = ServiceBrowser(self.zeroconf, SERVICE_TYPE, handlers=[self._changed])

    def _changed(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self.found.discard(name)
        else:
            self.found.add(name)

    def seeds(self) -> list[tuple[str, Address]]:
        """(advertised node name, address) of every service found but ours."""
        return _resolved(self.zeroconf, self.found - {self.info.name})

    def close(self) -> None:
        self.browser.cancel()
        self.zeroconf.unregister_service(self.info)
        self.zeroconf.close()


def _resolved(zeroconf: Zeroconf, services: Iterable[str]) -> list[tuple[str, Address]]:
    """(advertised node name, address) of each service; those that do not answer in time are left out."""
    out: list[tuple[str, Address]] = []
    for service in sorted(services):
        info = zeroconf.get_service_info(SERVICE_TYPE, service, timeout=RESOLVE_TIMEOUT_MS)
        if info is not None and info.port:
            node = ((info.properties or {}).get(b"name") or b"").decode(errors="replace")
            out.extend((node, Address(host, info.port)) for host in info.parsed_addresses(IPVersion.V4Only))
    return out


async def browse_mdns(seconds: float) -> list[tuple[str, Address]]:
    """Browse every interface (loopback too) for ``seconds`` without advertising; return (name, address) found."""
    def run() -> list[tuple[str, Address]]:
        zeroconf = Zeroconf(ip_version=IPVersion.V4Only)
        try:
            found: set[str] = set()
            browser = ServiceBrowser(zeroconf, SERVICE_TYPE, handlers=[
                lambda zeroconf, service_type, name, state_change: found.add(name)])
            trio.from_thread.run(trio.sleep, seconds)
            browser.cancel()
            return _resolved(zeroconf, found)
        finally:
            zeroconf.close()
    return await trio.to_thread.run_sync(run)


async def resolve_seeds(name: str, default_port: int, *, nameserver: Address | None = None) -> list[Address]:
    """The addresses of ``name``'s SRV records, or of its A/AAAA records with ``default_port``.

    A name that does not resolve gives no addresses (logged at debug): DNS
    records come and go as an orchestrator scales a service.
    """
    try:
        resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
    except dns.exception.DNSException as exc:  # no /etc/resolv.conf, say
        logger.warning("--join-dns %s: no resolver: %s", name, exc)
        return []
    if nameserver is not None:
        resolver.nameservers, resolver.port = [nameserver.host], nameserver.port
    resolver.lifetime = 5.0

    async def query(qname: str, rdtype: str) -> list[Any]:
        try:
            return list(await resolver.resolve(qname, rdtype))
        except dns.exception.DNSException as exc:  # NXDOMAIN, no answer, no server, timeout
            logger.debug("no %s record for %s: %s", rdtype, qname, exc)
            return []

    async def hosts(qname: str) -> list[str]:
        # sorted: a record set has no order (dnspython may hand the same set out in any order)
        return [address for rdtype in ("A", "AAAA") for address in sorted(r.address for r in await query(qname, rdtype))]

    out: list[Address] = []
    srv = await query(name, "SRV")
    if srv:
        for record in sorted(srv, key=lambda r: (r.priority, -r.weight)):
            out.extend(Address(host, record.port) for host in await hosts(record.target.to_text()))
    else:
        out.extend(Address(host, default_port) for host in await hosts(name))
    return list(dict.fromkeys(out))


def _learn(node: Node, seeds: Iterable[Address]) -> None:
    for address in seeds:
        if address != node.address:
            node.learn_peer(address)


async def run_discovery(node: Node) -> None:
    """Advertise and browse mDNS (``--mdns``) and resolve ``--join-dns``, every refresh; runs until cancelled."""
    config, address = node.config, node.address
    assert address is not None  # serve starts discovery once the node listens
    advert = None
    try:
        if config.mdns:
            try:
                advert = await trio.to_thread.run_sync(MdnsAdvert, config.name, config.role, address)
                logger.info("mdns advertised", extra={"service": advert.info.name})
            except OSError as exc:  # no multicast here: the node runs on without it
                node.counters["mdns_failed"] += 1
                logger.error("--mdns: cannot advertise or browse: %s", exc)
        while True:
            if advert is not None:
                _learn(node, [a for _, a in await trio.to_thread.run_sync(advert.seeds)])
            if config.join_dns is not None:
                _learn(node, await resolve_seeds(config.join_dns, address.port,
                                                 nameserver=config.dns_server))
            await trio.sleep(config.peer_refresh_s)
    finally:
        if advert is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(advert.close)

