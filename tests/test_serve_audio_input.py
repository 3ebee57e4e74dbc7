"""Audio input controls of ``slmzoo serve`` without a server: URL fetching refuses what it must."""

import urllib.request

import pytest

pytest.importorskip("fastapi")

from slmzoo.serving.audio_input import _CheckedRedirects, check_url  # noqa: E402
from slmzoo.serving.errors import APIError  # noqa: E402
from slmzoo.serving.limits import Limits  # noqa: E402


def resolver(address):
    return lambda host, port: [(2, 1, 6, "", (address, port))]


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
