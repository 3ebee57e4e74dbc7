"""Audio from requests: base64 parts, ``data:`` URLs, uploads and (when enabled) fetched http(s) URLs, decoded
under the limits in the order size -> header (channels, rate, duration) -> decode, so a small file that claims or
expands to hours of audio is refused before it is materialised.

Any container libsndfile reads is accepted (wav, flac, ogg/opus, mp3), as vLLM accepts what its decoder reads.
Channels are averaged (the documented downmix policy, as ``slmzoo.audio`` does); more than ``max_channels`` is
refused rather than mixed. Decoding never shells out (no ffmpeg).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import partial

import numpy as np

from slmzoo.serving.errors import APIError, bad_request
from slmzoo.serving.limits import Limits

MAX_SAMPLE_RATE = 384_000


@dataclass
class Clip:
    """A decoded clip: mono float32 ``wave [S]`` at the model's rate and its duration in seconds."""

    wave: np.ndarray
    seconds: float


def too_large(what: str, size: int, cap: int, param: str | None = None) -> APIError:
    return APIError(413, f"{what} is {size} bytes; the limit is {cap} bytes (--max-upload-mb)", "file_too_large", param)


def decode_audio(data: bytes, limits: Limits, sampling_rate: int, param: str = "file") -> Clip:
    """Encoded audio bytes -> a mono clip at ``sampling_rate``; every failure is a 4xx :class:`APIError`."""
    import soundfile as sf

    from slmzoo.audio import resample

    if len(data) > limits.max_upload_bytes:
        raise too_large("the audio", len(data), limits.max_upload_bytes, param)
    if not data:
        raise bad_request("the audio is empty (0 bytes)", param, "empty_audio")
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - libsndfile raises several types; all mean "not audio we read"
        raise bad_request("invalid or unsupported audio file (formats: wav, flac, ogg, mp3)", param,
                          "invalid_audio") from None
    with f:
        rate, channels = f.samplerate, f.channels
        if channels > limits.max_channels:
            raise bad_request(f"the audio has {channels} channels; at most {limits.max_channels} are accepted",
                              param, "too_many_channels")
        if not 0 < rate <= MAX_SAMPLE_RATE:
            raise bad_request(f"the audio's sample rate {rate} Hz is not usable", param, "invalid_audio")
        # The header's frame count may lie: read at most one frame past the caps, whatever it claims.
        cap = min(int(limits.max_audio_seconds * rate), limits.max_decoded_samples // max(channels, 1))
        if f.frames > cap:
            raise _too_long(f.frames / rate, limits, param)
        try:
            pcm = f.read(frames=cap + 1, dtype="float32", always_2d=True)
        except Exception:  # noqa: BLE001
            raise bad_request("the audio could not be decoded", param, "invalid_audio") from None
    if len(pcm) > cap:
        raise _too_long(len(pcm) / rate, limits, param)
    if len(pcm) == 0:
        raise bad_request("the audio has no samples", param, "empty_audio")
    if not np.isfinite(pcm).all():
        raise bad_request("the audio has NaN or infinite samples", param, "invalid_audio")
    wave = pcm.mean(axis=1) if channels > 1 else pcm[:, 0]
    return Clip(resample(wave, rate, sampling_rate), len(pcm) / rate)


def _too_long(seconds: float, limits: Limits, param: str) -> APIError:
    return APIError(413, f"the audio is {seconds:.1f} s long; the limit is {limits.max_audio_seconds:g} s "
                         "(--max-audio-seconds) or the decoded-samples cap", "audio_too_long", param)


def decode_base64(text: str, limits: Limits, param: str) -> bytes:
    """Base64 text -> bytes, its length checked before decoding."""
    if not isinstance(text, str):
        raise bad_request("audio data must be a base64 string", param)
    if len(text) * 3 // 4 > limits.max_upload_bytes + 3:
        raise too_large("the audio", len(text) * 3 // 4, limits.max_upload_bytes, param)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("audio data is not valid base64", param, "invalid_base64") from None


def data_url_bytes(url: str, limits: Limits, param: str) -> bytes:
    """``data:audio/...;base64,...`` -> bytes (only base64 data URLs, as vLLM)."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise bad_request("a data: URL must look like data:audio/wav;base64,<data>", param, "invalid_url")
    return decode_base64(payload, limits, param)


# -- fetching http(s) URLs -------------------------------------------------------------------------------------
# The address checked is the address connected to: each connection resolves its host once, refuses it unless every
# address is public, and connects to one of those (the Host header and TLS SNI and certificate keep the name). A
# name resolved again after the check could point somewhere else by then (DNS rebinding). Environment proxies are
# not used: the connection goes to the checked address, not to a proxy.
def check_url(url: str, limits: Limits, param: str, resolve=None) -> list[str]:
    """Refuse a URL unless fetching is on, its host is on the allow-list and every address it resolves to is a
    public one (no private, loopback, link-local, multicast or reserved address: no SSRF into the network).
    Returns those addresses."""
    if not limits.allowed_audio_hosts:
        raise bad_request("fetching audio URLs is off on this server (--allow-audio-host enables it); "
                          "send the audio as input_audio or a data: URL", param, "url_fetching_disabled")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request("audio_url must be an http(s) or data: URL", param, "invalid_url")
    host = parts.hostname.lower()
    if host not in {h.lower() for h in limits.allowed_audio_hosts}:
        raise bad_request(f"audio host {host!r} is not allowed (--allow-audio-host)", param, "host_not_allowed")
    return public_addresses(host, parts.port or (443 if parts.scheme == "https" else 80), param, resolve)


def public_addresses(host: str, port: int, param: str, resolve=None) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order; a 400 unless every one is public."""
    resolve = resolve or socket.getaddrinfo
    try:
        addresses = list(dict.fromkeys(info[4][0] for info in resolve(host, port, type=socket.SOCK_STREAM)))
    except (OSError, UnicodeError):
        raise bad_request(f"audio host {host!r} does not resolve", param, "invalid_url") from None
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise bad_request(f"audio host {host!r} resolves to a non-public address", param, "host_not_allowed")
    return addresses


def _connect_checked(address: tuple[str, int], timeout, source_address=None, *, param: str) -> socket.socket:
    """``http.client``'s socket factory: ``address`` is ``(name, port)``; the socket goes to a checked address."""
    host, port = address
    error: OSError | None = None
    for ip in public_addresses(host, port, param):
        try:
            return socket.create_connection((ip, port), timeout, source_address)
        except OSError as failure:
            error = failure
    raise error or OSError(f"no address to connect to for {host}")


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, param: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = partial(_connect_checked, param=param)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, param: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = partial(_connect_checked, param=param)  # then TLS to the name (SNI, certificate)


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, param: str):
        super().__init__()
        self.param = param

    def http_open(self, req):
        return self.do_open(partial(_CheckedHTTPConnection, param=self.param), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, param: str):
        super().__init__(context=ssl.create_default_context())
        self.param = param

    def https_open(self, req):
        return self.do_open(partial(_CheckedHTTPSConnection, param=self.param), req, context=self._context)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Every redirect hop is checked like the first URL; at most ``max_redirects`` hops."""

    def __init__(self, limits: Limits, param: str):
        self.limits, self.param, self.hops = limits, param, 0

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops += 1
        if self.hops > self.limits.max_redirects:
            raise bad_request("too many redirects fetching audio_url", self.param, "invalid_url")
        check_url(newurl, self.limits, self.param)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_url(url: str, limits: Limits, param: str) -> bytes:
    """GET an http(s) audio URL under the checks, the timeout and the size cap (enforced while reading)."""
    check_url(url, limits, param)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _CheckedHTTPHandler(param),
                                         _CheckedHTTPSHandler(param), _CheckedRedirects(limits, param))
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "slmzoo-serve"}),
                         timeout=limits.fetch_timeout_seconds) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limits.max_upload_bytes:
                raise too_large("the fetched audio", int(length), limits.max_upload_bytes, param)
            data = response.read(limits.max_upload_bytes + 1)
    except APIError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise bad_request(f"could not fetch audio_url ({type(error).__name__})", param, "fetch_failed") from None
    if len(data) > limits.max_upload_bytes:
        raise too_large("the fetched audio", len(data), limits.max_upload_bytes, param)
    return data
