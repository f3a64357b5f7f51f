"""The emulated links' settings and address plan: profiles, veth pairs and their addresses, delays, tbf buckets.

Addresses come from 198.18.0.0/15, the range RFC 2544 reserves for
benchmarking.  Each node's service address is on its namespace's loopback
device; each link is a veth pair whose ends get a /30 of their own, so a
peer's source address names the link it came over.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class LinkProfile:
    """The links of one benchmark setting.

    ``rate_bits_per_s`` None means plain loopback: no namespaces, no caps
    and no added latency.  Round trips are the latency *added* to each
    path; the client reaches the cloud on its own link.
    """

    name: str
    rate_bits_per_s: float | None = None
    client_edge_rtt_s: float = 0.005
    edge_cloud_rtt_s: float = 0.030
    client_cloud_rtt_s: float = 0.035

    @property
    def emulated(self) -> bool:
        return self.rate_bits_per_s is not None


LOOPBACK = LinkProfile(name="loopback", client_edge_rtt_s=0.0, edge_cloud_rtt_s=0.0, client_cloud_rtt_s=0.0)
PROFILES: dict[str, LinkProfile] = {
    p.name: p for p in (
        LOOPBACK,
        LinkProfile(name="1gbit", rate_bits_per_s=1e9),
        LinkProfile(name="100mbit", rate_bits_per_s=100e6),
    )
}


#: Each node's service address, on its namespace's loopback device.
SERVICE_IP = {"edge": "198.18.0.2", "cloud": "198.18.0.3"}


@dataclass(frozen=True)
class Link:
    """One veth pair: ``a`` and ``b`` are roles, the addresses their ends."""

    name: str
    short: str  # in device names, which have at most 15 characters
    a: str
    b: str
    a_ip: str
    b_ip: str

    def rtt_s(self, profile: LinkProfile) -> float:
        return {"client-edge": profile.client_edge_rtt_s, "edge-cloud": profile.edge_cloud_rtt_s,
                "client-cloud": profile.client_cloud_rtt_s}[self.name]


LINKS = (
    Link("client-edge", "ce", "client", "edge", "198.18.1.1", "198.18.1.2"),
    Link("edge-cloud", "ec", "edge", "cloud", "198.18.2.1", "198.18.2.2"),
    Link("client-cloud", "cc", "client", "cloud", "198.18.3.1", "198.18.3.2"),
)


def proxy_delays(role: str, profile: LinkProfile) -> dict[str, float]:
    """One-way delay the proxy in front of ``role``'s node adds, by the peer's address.

    A peer's packets to ``role`` leave from its end of the link they share,
    so the source address names the link; half its round trip is added in
    each direction.
    """
    out = {}
    for link in LINKS:
        if role == link.b:
            out[link.a_ip] = link.rtt_s(profile) / 2
        elif role == link.a:
            out[link.b_ip] = link.rtt_s(profile) / 2
    return out


def tbf_burst_bytes(rate_bits_per_s: float) -> int:
    """tbf bucket size: 2 ms at the rate, at least 64 KiB.

    64 KiB fits a whole GSO segment from veth; a bucket below rate/HZ
    would cap the rate below the configured one.
    """
    return max(64 * 1024, int(rate_bits_per_s / 8 * 0.002))
