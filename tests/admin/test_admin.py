"""The admin socket: the real aiohttp server on a unix socket, the real http.client client."""

import http.client
import json
import socket

import pytest

from vmblock.admin.client import AdminClient
from vmblock.errors import AlreadyExists, InvalidArgument, NotFound, ServerError


def test_connect_finds_no_server_without_socket(tmp_path):
    assert AdminClient.connect(str(tmp_path / "admin.sock")) is None


def test_connect_treats_stale_socket_as_no_server(tmp_path):
    path = str(tmp_path / "admin.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()   # the file stays, nobody listens: what a killed server leaves behind
    assert AdminClient.connect(path) is None


def test_verbs_round_trip(served):
    c = AdminClient.connect(served.socket_path)
    assert c is not None
    vm = c.vm_create(name="web", guest_os="debian12")
    d = c.vdisk_create(name="root", size="1G", vm="web")
    assert (d["vm"], d["lun"], d["size_bytes"]) == ("web", 0, 1 << 30)
    assert c.vm_show(name="web")["vdisks"][0]["url"] == d["url"]
    assert c.vm_list()[0]["uuid"] == vm["uuid"]
    assert c.config_set(key="iscsi.nop_interval", value="5") == \
        {"key": "iscsi.nop_interval", "value": "5", "live": False}
    assert c.config_list()["iscsi.nop_interval"] == "5"
    assert c.vdisk_delete(name="root")["name"] == "root"
    assert c.vdisk_list() == []


@pytest.mark.parametrize("call, exc", [
    (lambda c: c.vm_show(name="ghost"), NotFound),
    (lambda c: c.vm_create(name="twin"), AlreadyExists),
    (lambda c: c.vdisk_create(name="x", size="huge"), InvalidArgument),
    (lambda c: c.vdisk_create(name="x"), InvalidArgument),   # missing argument
    (lambda c: c.session_list(), ServerError),
])
def test_errors_keep_their_class_over_the_socket(served, call, exc):
    c = AdminClient(served.socket_path)
    c.vm_create(name="twin")
    with pytest.raises(exc):
        call(c)


def raw_post(path_on_fs, url, body):
    conn = http.client.HTTPConnection("localhost")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path_on_fs)
    conn.sock = sock
    conn.request("POST", url, body=body)
    resp = conn.getresponse()
    reply = resp.status, json.loads(resp.read())
    conn.close()
    return reply


def test_unknown_verb_and_bad_body_are_rejected(served):
    status, reply = raw_post(served.socket_path, "/v1/vm/explode", b"{}")
    assert status == 404 and reply["kind"] == "InvalidArgument"
    status, reply = raw_post(served.socket_path, "/v1/vm/list", b"not json")
    assert status == 400 and reply["kind"] == "InvalidArgument"
    status, reply = raw_post(served.socket_path, "/v1/vm/list", b"[1, 2]")
    assert status == 400 and "JSON object" in reply["error"]
