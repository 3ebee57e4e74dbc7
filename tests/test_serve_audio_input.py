"""Audio input controls of ``slmzoo serve`` without a server: URL fetching refuses what it must, and connects to
the very address it checked."""

import http.server
import socket
import ssl
import threading
import urllib.request

import pytest

pytest.importorskip("fastapi")

from slmzoo.serving.audio_input import (  # noqa: E402
    _CheckedHTTPSConnection,
    _CheckedRedirects,
    check_url,
    fetch_url,
)
from slmzoo.serving.errors import APIError  # noqa: E402
from slmzoo.serving.limits import Limits  # noqa: E402

PUBLIC = "93.184.216.34"


def resolver(*addresses):
    """A getaddrinfo for the example hosts that answers ``addresses[i]`` at its i-th call (the last one from then
    on); other names and literal addresses resolve as usual."""
    calls, real = [], socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if not host.endswith("example.com"):
            return real(host, port, *args, **kwargs)
        calls.append(host)
        return [(2, 1, 6, "", (addresses[min(len(calls), len(addresses)) - 1], port))]

    resolve.calls = calls
    return resolve


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.5", "169.254.169.254", "::1", "fe80::1",
                                     "100.64.0.1", "0.0.0.0"])
def test_non_public_addresses_are_refused(address):
    with pytest.raises(APIError) as error:
        check_url("https://audio.example.com/a.wav", Limits(allowed_audio_hosts=["audio.example.com"]), "url",
                  resolve=resolver(address))
    assert error.value.status == 400 and error.value.code == "host_not_allowed"


def test_fetching_is_off_by_default_and_only_listed_hosts_pass():
    with pytest.raises(APIError) as off:
        check_url("https://audio.example.com/a.wav", Limits(), "url", resolve=resolver("93.184.216.34"))
    assert off.value.code == "url_fetching_disabled"
    limits = Limits(allowed_audio_hosts=["audio.example.com"])
    check_url("https://AUDIO.example.com/a.wav", limits, "url", resolve=resolver("93.184.216.34"))
    for url in ("https://other.example.com/a.wav", "file:///etc/passwd", "ftp://audio.example.com/a"):
        with pytest.raises(APIError):
            check_url(url, limits, "url", resolve=resolver("93.184.216.34"))


def test_every_redirect_is_checked_again(monkeypatch):
    limits = Limits(allowed_audio_hosts=["audio.example.com"], max_redirects=2)
    monkeypatch.setattr("socket.getaddrinfo", resolver("10.0.0.1"))  # the redirect target resolves privately
    handler = _CheckedRedirects(limits, "url")
    request = urllib.request.Request("https://audio.example.com/a.wav")
    with pytest.raises(APIError) as error:
        handler.redirect_request(request, None, 302, "Found", {}, "https://audio.example.com/b.wav")
    assert error.value.code == "host_not_allowed"
    handler.hops = 2
    with pytest.raises(APIError) as many:
        handler.redirect_request(request, None, 302, "Found", {}, "https://audio.example.com/c.wav")
    assert "too many redirects" in many.value.message


class FakeConnect:
    """Stands in for ``socket.create_connection``: records where a connection was asked to go, and goes to a local
    test server instead (``to``), or nowhere."""

    def __init__(self, monkeypatch, to=None):
        self.targets, self.to, self.real = [], to, socket.create_connection
        monkeypatch.setattr("socket.create_connection", self)

    def __call__(self, address, *args, **kwargs):
        self.targets.append(address)
        if self.to is None:
            raise ConnectionRefusedError("no connection in this test")
        return self.real(self.to, *args, **kwargs)


@pytest.fixture
def audio_server():
    """A local HTTP server answering every GET with b"RIFF..." and recording the Host header it got."""
    hosts = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hosts.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", "8")
            self.end_headers()
            self.wfile.write(b"RIFF....")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address, hosts
    server.shutdown()
    server.server_close()


def test_the_fetch_connects_to_the_address_it_checked_with_the_name_as_host(monkeypatch, audio_server):
    address, hosts = audio_server
    monkeypatch.setattr("socket.getaddrinfo", resolver(PUBLIC))
    connect = FakeConnect(monkeypatch, to=address)
    data = fetch_url("http://audio.example.com/a.wav", Limits(allowed_audio_hosts=["audio.example.com"]), "url")
    assert data == b"RIFF...." and connect.targets == [(PUBLIC, 80)] and hosts == ["audio.example.com"]


def test_a_name_that_rebinds_to_a_private_address_after_the_check_is_not_connected_to(monkeypatch):
    """DNS rebinding: public when checked, loopback when the connection resolves it again."""
    resolve = resolver(PUBLIC, "127.0.0.1")
    monkeypatch.setattr("socket.getaddrinfo", resolve)
    connect = FakeConnect(monkeypatch)
    with pytest.raises(APIError) as error:
        fetch_url("http://audio.example.com/a.wav", Limits(allowed_audio_hosts=["audio.example.com"]), "url")
    assert error.value.code == "host_not_allowed" and len(resolve.calls) == 2 and connect.targets == []


def test_https_connects_to_the_checked_address_with_the_name_for_sni(monkeypatch):
    monkeypatch.setattr("socket.getaddrinfo", resolver(PUBLIC))
    connected, wrapped = [], []

    class Socket:
        def setsockopt(self, *args):
            pass

    context = ssl.create_default_context()
    context.wrap_socket = lambda sock, server_hostname: wrapped.append(server_hostname) or sock
    monkeypatch.setattr("socket.create_connection", lambda address, *args: connected.append(address) or Socket())
    _CheckedHTTPSConnection("audio.example.com", 443, context=context, param="url").connect()
    assert connected == [(PUBLIC, 443)] and wrapped == ["audio.example.com"]


def test_translation_uses_the_cards_translation_task():
    from types import SimpleNamespace

    from slmzoo.serving.app import _task_instruction

    def model(tasks, default="asr"):
        return SimpleNamespace(processor=SimpleNamespace(prompt=SimpleNamespace(tasks=tasks, default_task=default)))

    salmonn = model({"asr": "Transcribe.", "ast": "Translate it into German."})
    assert _task_instruction(salmonn, "translate") == "Translate it into German."
    assert _task_instruction(salmonn, "transcribe") == "Transcribe."
    assert _task_instruction(model({"caption": "Describe."}, "caption"), "transcribe") == "Describe."
    with pytest.raises(APIError) as error:
        _task_instruction(model({"asr": "Transcribe."}), "translate")
    assert error.value.code == "no_translation_task"
