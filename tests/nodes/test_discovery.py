"""Join seeds from mDNS and DNS: real nodes find each other without ``--join``.

mDNS runs on loopback (zeroconf bound to 127.0.0.1: multicast works there
although ``lo`` has no MULTICAST flag in this container).  DNS runs against
a small authoritative server on loopback made of dnspython's message
pieces: the node's resolver path (dnspython's stub resolver over UDP) is
the real one, only the server is ours.
"""

from __future__ import annotations

import socket

import dns.message
import dns.rcode
import dns.rrset
import pytest
import trio
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from nodes import ConfigError, NodeClient, resolve_config
from nodes._config import Address
from nodes._discovery import SERVICE_TYPE, MdnsAdvert, _resolved, browse_mdns, resolve_seeds

#: Seen as a test's limit for a few refresh intervals of 0.3 s, on a loaded 2-core machine.
WAIT_S = 30


async def members_of(client: NodeClient, names, state="alive"):
    """Wait until ``client``'s node sees every one of ``names`` in ``state``; return its records."""
    with trio.fail_after(WAIT_S):
        while True:
            records = {m.name: m for m in await client.members()}
            if all(n in records and records[n].state == state for n in names):
                return records
            await trio.sleep(0.1)


async def test_two_nodes_find_each_other_by_mdns(node_procs):
    a = node_procs.start("mdns-a", "edge", args=["--mdns", "--peer-refresh-s", "0.3"])
    b = node_procs.start("mdns-b", "cloud", args=["--mdns", "--peer-refresh-s", "0.3", "--location", "b-site"])
    async with await b.client(node_procs.ca.app) as client:
        records = await members_of(client, ["mdns-a", "mdns-b"])
    assert records["mdns-a"].address == str(a.address) and records["mdns-a"].role == "edge"
    async with await a.client(node_procs.ca.app) as client:
        records = await members_of(client, ["mdns-a", "mdns-b"])
    assert records["mdns-b"].location == "b-site"
    # An application browsing finds both, by the names in their TXT records.
    found = dict(await browse_mdns(2.0))
    assert found.get("mdns-a") == a.address and found.get("mdns-b") == b.address


def test_an_advert_of_an_address_that_is_not_loopback_uses_every_interface():
    # A node listening on 0.0.0.0 advertises its host name: zeroconf then
    # binds every interface, as for any address but loopback.
    advert = MdnsAdvert("wide", "node", Address(socket.gethostname(), 7401))
    try:
        assert advert.info.name.endswith(SERVICE_TYPE) and advert.info.port == 7401
        assert advert.zeroconf.engine.protocols  # it listens
    finally:
        advert.close()


def test_a_service_whose_name_property_has_no_value_is_found_without_a_name():
    # Another program on the network may advertise the service type with a
    # valueless "name" TXT key; browsing takes its address, with name "".
    zeroconf = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    info = ServiceInfo(SERVICE_TYPE, f"odd.{SERVICE_TYPE}", addresses=[socket.inet_aton("127.0.0.1")], port=7409,
                       properties={"name": None}, server="odd.local.")
    zeroconf.register_service(info)
    try:
        assert _resolved(zeroconf, [info.name]) == [("", Address("127.0.0.1", 7409))]
    finally:
        zeroconf.unregister_service(info)
        zeroconf.close()


class DnsServer:
    """An authoritative DNS server on a loopback UDP port, answering from ``records``: (name, type) -> rdata."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = records
        self.queries: list[tuple[str, str]] = []

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        task_status.started(Address("127.0.0.1", sock.getsockname()[1]))
        with sock:
            while True:
                data, peer = await sock.recvfrom(4096)
                query = dns.message.from_wire(data)
                reply = dns.message.make_response(query)
                reply.flags |= dns.flags.AA
                question = query.question[0]
                name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
                self.queries.append((name, rdtype))
                answers = self.records.get((name, rdtype))
                if answers:
                    reply.answer.append(dns.rrset.from_text_list(name, 5, "IN", rdtype, answers))
                elif not any(n == name for n, _ in self.records):
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                await sock.sendto(reply.to_wire(), peer)


async def test_resolve_seeds_takes_srv_records_and_else_a_records_with_the_default_port(nursery):
    server = DnsServer({
        ("nodes.test.", "SRV"): ["0 5 7401 one.nodes.test.", "1 5 7402 two.nodes.test."],
        ("one.nodes.test.", "A"): ["127.0.0.11"], ("two.nodes.test.", "A"): ["127.0.0.12"],
        ("plain.test.", "A"): ["127.0.0.21", "127.0.0.22"], ("plain.test.", "AAAA"): ["::1"]})
    at = await nursery.start(server.serve)
    assert await resolve_seeds("nodes.test", 9999, nameserver=at) == [
        Address("127.0.0.11", 7401), Address("127.0.0.12", 7402)]
    assert await resolve_seeds("plain.test", 7400, nameserver=at) == [
        Address("127.0.0.21", 7400), Address("127.0.0.22", 7400), Address("::1", 7400)]
    assert await resolve_seeds("missing.test", 7400, nameserver=at) == []


async def test_a_node_joins_the_nodes_a_dns_name_lists(node_procs, nursery):
    a = node_procs.start("dns-a", "edge", args=["--peer-refresh-s", "0.3"])
    server = DnsServer({})
    at = await nursery.start(server.serve)
    b = node_procs.start("dns-b", "edge", args=["--peer-refresh-s", "0.3", "--join-dns", "svc.cluster.test",
                                                "--dns-server", str(at)])
    async with await b.client(node_procs.ca.app) as client:
        await trio.sleep(1.0)  # the name has no records yet: b knows only itself
        assert [m.name for m in await client.members()] == ["dns-b"]
        # Re-resolved every refresh: a record added later is found.
        server.records[("svc.cluster.test.", "SRV")] = [f"0 0 {a.address.port} a.cluster.test."]
        server.records[("a.cluster.test.", "A")] = ["127.0.0.1"]
        await members_of(client, ["dns-a", "dns-b"])
    assert ("svc.cluster.test.", "SRV") in server.queries


@pytest.mark.parametrize("flags, match", [
    ({"capability": ["gpu"]}, "not KEY=VALUE"),
    ({"capability": ["GPU=x"]}, "capability name 'GPU'"),
    ({"capability": ["gpu="]}, "its value"),
    ({"capability": ["gpu=a", "gpu=b"]}, "given twice"),
    ({"join_dns": "bad..name"}, "not a DNS name"),
    ({"location": "x" * 129}, "location"),
])
def test_bad_membership_settings_are_config_errors(flags, match):
    from nodes._config import SETTINGS
    by_name = {s.name: s for s in SETTINGS}
    parsed = {}
    with pytest.raises(ConfigError, match=match):
        for key, value in flags.items():
            parsed[key] = [by_name[key].parse(v) for v in value] if by_name[key].repeated else \
                by_name[key].parse(value)
        resolve_config({"name": "n", **parsed}, env={})


def test_capabilities_parse_from_flags_environment_and_file(tmp_path):
    config_file = tmp_path / "node.toml"
    config_file.write_text('name = "n"\ncapability = ["gpu=nvidia-h100", "wasi-nn=onnx"]\nlocation = "lab"\n')
    config = resolve_config({}, env={}, config_file=config_file)
    assert dict(config.capability) == {"gpu": "nvidia-h100", "wasi-nn": "onnx"} and config.location == "lab"
    config = resolve_config({"name": "n"}, env={"MIGRATE_NODE_CAPABILITY": "gpu=a100,fpga=xilinx"})
    assert dict(config.capability) == {"gpu": "a100", "fpga": "xilinx"}
