"""The revocation list: its entries, its file, the CLI that appends to it, and the Hello check it feeds."""

from __future__ import annotations

import pytest

from nodes import ConfigError, Hello
from nodes._authorization import hello_refusal
from nodes._revocation import Revocations, entry, load, parse, revoke
from nodes._tls import Identity
from nodeproc import run_cli

APP = Identity("client", ("app-7", "app-7.example"), 0x1234)


def test_entries_are_serials_or_names_bare_or_prefixed():
    assert entry("serial:0x1234") == entry("0x1234") == entry("4660") == ("serial", 0x1234)
    assert entry("name:app-7") == entry("app-7") == ("name", "app-7")
    for bad in ("serial:zz", "serial:-3", "name:", "name:a b", "colour:red"):
        with pytest.raises(ConfigError):
            entry(bad)


def test_a_list_revokes_by_serial_or_by_any_name_the_certificate_covers():
    assert Revocations().refusal(APP) is None
    assert "serial:0x1234" in parse("serial:0x1234\n").refusal(APP)
    assert "app-7.example" in parse("# leaked\nname:app-7.example  # SAN\n\n").refusal(APP)
    assert parse("serial:0x99\nname:app-8\n").refusal(APP) is None
    assert parse("serial:0x1234").refusal(None) is None  # no TLS, nothing to check


def test_a_bad_line_refuses_the_whole_list_naming_it(tmp_path):
    path = tmp_path / "revoked.txt"
    assert load(path) == Revocations()  # absent: nothing revoked
    path.write_text("name:ok\nserial:nope\n")
    with pytest.raises(ConfigError, match=r"revoked.txt line 2"):
        load(path)


def test_revoke_appends_normalised_entries(tmp_path):
    path = tmp_path / "revoked.txt"
    path.write_text("name:old")  # no final newline
    assert revoke(path, "0X1234") == "serial:0x1234"
    assert revoke(path, "app-9") == "name:app-9"
    assert path.read_text() == "name:old\nserial:0x1234\nname:app-9\n"
    assert load(path) == Revocations(frozenset({0x1234}), frozenset({"old", "app-9"}))


def test_the_hello_check_refuses_a_revoked_certificate_before_the_name():
    hello = Hello(versions=(1,), name="app-7", role="client", max_frame_bytes=1 << 20)
    assert hello_refusal(hello, APP, parse("")) is None
    assert "revoked" in hello_refusal(hello, APP, parse("name:app-7"))
    other = Hello(versions=(1,), name="other", role="client", max_frame_bytes=1 << 20)
    assert "revoked" in hello_refusal(other, APP, parse("serial:4660"))


def test_the_cli_prints_serials_and_revokes_them(cluster_tls, tmp_path):
    out = tmp_path / "tls"
    issued = run_cli("cert", "issue", "--ca", str(cluster_tls.ca_dir), "--name", "leaky", "--role", "client",
                     "--out", str(out)).stdout
    shown = run_cli("cert", "show", str(out)).stdout
    serial = shown.split("serial:")[1].split()[0]
    assert f"serial:{serial}" in issued and "name leaky role client" in shown
    listed = tmp_path / "revoked.txt"
    assert "added serial:" in run_cli("cert", "revoke", "--list", str(listed), f"serial:{serial}").stdout
    assert load(listed).serials == {int(serial, 16)}
    refused = run_cli("cert", "revoke", "--list", str(listed), "serial:xyz", check=False)
    assert refused.returncode == 2 and "serial:xyz" in refused.stderr
