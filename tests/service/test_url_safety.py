"""URL safety (SSRF): only http(s), only public addresses, every redirect hop checked.

Loopback stands in for "the internet" and "the inside": a server on 127.0.0.2 is declared
reachable (``allowed_networks``), the media server on 127.0.0.1 is not. A redirect from the
first to the second is what an attacker's public page pointing at a metadata endpoint
looks like. The fetches are real yt-dlp; the service test runs a real Serve app with the
guard on in its workers.
"""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from rescored_ray import netguard
from rescored_ray.config import SourceConfig
from rescored_ray.errors import NonRetryableError
from rescored_ray.netguard import NonPublicAddress, check_url, is_public, networks
from rescored_ray.source import fetch, parse_source
from tests.media import MediaServer
from tests.service_app import deploy, wait_for_job

OUTSIDE = "127.0.0.2"  # plays a public host
OUTSIDE_NETWORKS = networks([f"{OUTSIDE}/32"])

REFUSED = [
    "127.0.0.1",
    "127.255.255.254",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "240.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 127.0.0.1 and 169.254.169.254
    "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",  # 6to4 of 127.0.0.1 and 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "fe80::1%eth0",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address):
    assert not is_public(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert is_public(address)


def test_allowed_networks_open_exactly_their_range():
    intranet = networks(["10.20.0.0/16", "fd00:1::/32"])
    assert is_public("10.20.1.1", intranet) and is_public("fd00:1::5", intranet)
    assert not is_public("10.21.0.1", intranet) and not is_public("127.0.0.1", intranet)


@pytest.mark.parametrize(
    "url,reason",
    [
        ("file:///etc/passwd", "only http"),
        ("ftp://example.com/a.mp3", "only http"),
        ("gopher://127.0.0.1:70/", "only http"),
        ("javascript:alert(1)", "only http"),
        ("data:audio/mp3;base64,AA", "only http"),
        ("http:///a.mp3", "no host"),
        ("http://localhost/a.mp3", "non-public"),
        ("http://127.0.0.1:8000/x", "non-public"),
        ("http://[::1]/a.mp3", "non-public"),
        ("http://169.254.169.254/latest/meta-data/", "non-public"),
        ("http://[::ffff:127.0.0.1]/a", "non-public"),
        ("http://2130706433/a", "non-public"),  # 127.0.0.1 as one integer
        ("http://0x7f.1/a", "non-public"),
        ("http://10.0.0.1/a", "non-public"),
    ],
)
def test_check_url_refuses(url, reason):
    with pytest.raises(NonRetryableError, match=reason) as refused:
        check_url(url)
    assert refused.value.stage == "source" and not refused.value.retryable


def test_check_url_passes_public_and_unresolvable_hosts():
    check_url("http://8.8.8.8/a.mp3")
    check_url("https://does-not-exist.invalid/a.mp3")  # fails later, at download, as a transient error
    check_url("http://127.0.0.2/a.mp3", OUTSIDE_NETWORKS)


@pytest.fixture(scope="module")
def outside(media_dir, http_server):
    """A media server on the "public" 127.0.0.2, and a redirector there that sends every
    request to the media server on the internal 127.0.0.1."""
    target = http_server.base_url

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", target + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    redirector = ThreadingHTTPServer((OUTSIDE, 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    with MediaServer(media_dir, host=OUTSIDE) as media:
        yield {"media": media, "redirect": f"http://{OUTSIDE}:{redirector.server_address[1]}"}
    redirector.shutdown()
    redirector.server_close()


@pytest.fixture()
def guarded():
    netguard.guard_connections(OUTSIDE_NETWORKS)
    try:
        yield
    finally:
        netguard.unguard_connections()


def test_guard_refuses_connections_to_internal_addresses(guarded, http_server, outside):
    with pytest.raises(NonPublicAddress):
        socket.getaddrinfo("127.0.0.1", 80)
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(http_server.url("chorale.mp3"), timeout=5)
    assert isinstance(refused.value.reason, NonPublicAddress)
    assert urllib.request.urlopen(outside["media"].url("chorale.mp3"), timeout=5).status == 200


def test_guard_is_off_after_unguard(http_server):
    netguard.guard_connections(())
    netguard.unguard_connections()
    assert urllib.request.urlopen(http_server.url("chorale.mp3"), timeout=5).status == 200


def test_ytdlp_redirect_hop_to_an_internal_address_is_refused(guarded, outside, tmp_path):
    config = SourceConfig()
    fetched = fetch(parse_source(outside["media"].url("chorale.mp3"), config), tmp_path / "direct", config)
    assert fetched.path.stat().st_size > 10_000  # the guard lets the "public" server through
    with pytest.raises(NonRetryableError, match="non-public address") as refused:
        fetch(parse_source(outside["redirect"] + "/chorale.mp3", config), tmp_path / "redirected", config)
    assert refused.value.stage == "download"


# -- through the service, with the guard on in its workers ---------------------------------------


@pytest.fixture(scope="module")
def guarded_service(serve_port, tmp_path_factory):
    from ray import serve

    deploy(
        tmp_path_factory.mktemp("ssrf-data"),
        security={"allow_private_networks": False, "allowed_networks": [f"{OUTSIDE}/32"]},
        pipeline={"separation": {"model": "none"}, "transcription": {"stems": ["mix"]}, "write_preview": False},
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=30) as client:
        yield client
    serve.delete("rescored")


def test_service_refuses_internal_urls_with_400(guarded_service, http_server):
    for url in [
        http_server.url("chorale.mp3"),
        "file:///etc/passwd",
        "http://[::1]:8000/a.mp3",
        "http://169.254.169.254/latest/meta-data/",
        "ftp://127.0.0.2/a.mp3",
    ]:
        response = guarded_service.post("/api/v1/transcribe", json={"url": url})
        assert response.status_code == 400, (url, response.text)
        message = response.json()["error"]["message"]
        assert "non-public" in message or "http" in message


def test_service_fails_a_job_redirected_inside_and_runs_a_public_one(guarded_service, outside):
    redirected = guarded_service.post("/api/v1/transcribe", json={"url": outside["redirect"] + "/chorale.mp3"})
    assert redirected.status_code == 201, redirected.text
    direct = guarded_service.post("/api/v1/transcribe", json={"url": outside["media"].url("chorale.flac")})
    failed = wait_for_job(guarded_service, redirected.json()["job_id"])
    assert failed["status"] == "failed" and len(failed["attempts"]) == 1
    assert failed["error"]["stage"] == "download" and failed["error"]["retryable"] is False
    assert "non-public address" in failed["error"]["message"]
    completed = wait_for_job(guarded_service, direct.json()["job_id"])
    assert completed["status"] == "completed" and completed["result"]["n_notes"] > 20
