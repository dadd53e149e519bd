"""Weight download, resume, MD5 checks and the missing-weights error, against a local fake hub.

The fake hub is an HTTP server on 127.0.0.1 that speaks the hub's resolve URL scheme
(`/{repo}/resolve/{revision}/{path}`): HEAD gives X-Repo-Commit, ETag and the size; large files
redirect to a CDN path, as LFS files do; GET honours `Range: bytes=N-`. Every socket connection
to anything but loopback is refused, so nothing here can touch the internet.
"""

import dataclasses
import hashlib
import ipaddress
import random
import re
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub
import pytest
from selva_rt.runtime import weights
from selva_rt.runtime.errors import CheckpointError, WeightsMissingError
from selva_rt.runtime.variants import TINY, VARIANTS, WeightFile

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_THRESHOLD = 10_000  # larger files are served through a redirect, like LFS blobs


@pytest.fixture(autouse=True)
def no_internet(monkeypatch, tmp_path):
    """Loopback only; hub telemetry and tokens off; weights home in a temporary folder."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            if not ipaddress.ip_address(address[0]).is_loopback:
                raise ConnectionRefusedError(f"test refuses to connect to {address[0]}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1"):
            raise socket.gaierror(f"test refuses to resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in ("HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_HUB_DISABLE_XET"):
        monkeypatch.setenv(name, "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("SELVA_RT_HOME", str(tmp_path / "home"))


class FakeHub:
    """State of the fake hub: files by `repo/path`, every request seen, the Range header of each
    GET that delivered a file's bytes, bytes sent per file, and `cut_at[key] = n`: a file whose
    bytes after offset n never arrive (the connection drops)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # method, URL path
        self.ranges: dict[str, list[str | None]] = {}
        self.sent: Counter[str] = Counter()
        self.cut_at: dict[str, int] = {}
        self.url = ""

    def gets(self, key: str) -> list[str | None]:
        """Range headers of the GETs that delivered `key`'s bytes."""
        return self.ranges.get(key, [])


def make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.serve(body=False)

        def do_GET(self):
            self.serve(body=True)

        def serve(self, body: bool):
            hub.requests.append((self.command, self.path))
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
            cdn = re.fullmatch(r"/cdn/(.+)", self.path)
            key = f"{m[1]}/{m[3]}" if m else cdn[1] if cdn else None
            if key not in hub.files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = hub.files[key]
            sha = hashlib.sha256(data).hexdigest()
            if m and len(data) > LFS_THRESHOLD:  # LFS: the resolve URL points at the CDN
                self.send_response(302)
                self.send_header("Location", f"{hub.url}/cdn/{key}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", f'"{sha[:40]}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if body and (rng := self.headers.get("Range")):
                start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
            self.send_response(206 if start else 200)
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if body:
                hub.ranges.setdefault(key, []).append(self.headers.get("Range"))
                end = min(len(data), hub.cut_at.get(key, len(data)))
                chunk = data[start:end] if end > start else b""
                self.wfile.write(chunk)
                hub.sent[key] += len(chunk)
                self.close_connection = True

    return Handler


@pytest.fixture
def hub():
    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def publish(hub: FakeHub, repo: str, path: str, data: bytes, md5: bool = True) -> WeightFile:
    hub.files[f"{repo}/{path}"] = data
    role = "t5" if repo.endswith("t5") else path.rsplit("/", 1)[-1].split(".")[0]
    return WeightFile(role, repo, path, hashlib.md5(data).hexdigest() if md5 else None)


def variant_of(*files: WeightFile):
    return dataclasses.replace(TINY, name="fake", files=files, random_weights=False)


@pytest.fixture
def fake(hub):
    """A variant with a large LFS-style checkpoint, a small one (both with MD5s) and a
    two-file T5 folder without MD5s."""
    return variant_of(
        publish(hub, "org/selva", "weights/generator.pth", blob(1, 600_000)),
        publish(hub, "org/selva", "ext_weights/vae.pth", blob(2, 5_000)),
        publish(hub, "org/t5", "config.json", b'{"d_model": 768}', md5=False),
        publish(hub, "org/t5", "model.safetensors", blob(3, 20_000), md5=False),
    )


def statuses(variant) -> list[str]:
    return [s for _, s in weights.verify(variant, quiet=True)]


def test_layout(monkeypatch, tmp_path):
    f = VARIANTS["selva-small-16k"].file("video_encoder")
    assert weights.local_path(f) == tmp_path / "home/jnwnlee/SelVA/weights/video_enc_sup_5.pth"
    monkeypatch.delenv("SELVA_RT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights.weights_home() == tmp_path / ".cache/selva-rt"


def test_tiny_has_no_files(capsys):
    assert weights.resolve(TINY) == {}
    assert weights.missing_files(TINY) == []
    assert weights.download(TINY) == []
    assert "nothing to download" in capsys.readouterr().err


def test_download_verify_resolve(hub, fake):
    assert statuses(fake) == [weights.MISSING] * 4
    paths = weights.download(fake, quiet=True, endpoint=hub.url)
    assert paths == [weights.local_path(f) for f in fake.files]
    for f, p in zip(fake.files, paths, strict=True):
        assert p.read_bytes() == hub.files[f"{f.repo}/{f.path}"]
    assert statuses(fake) == [weights.OK, weights.OK, weights.NO_MD5, weights.NO_MD5]
    assert weights.missing_files(fake) == []
    assert not list(weights.weights_home().rglob("*.part"))
    home = weights.weights_home()
    assert weights.resolve(fake) == {
        "generator": home / "org/selva/weights/generator.pth",
        "vae": home / "org/selva/ext_weights/vae.pth",
        "t5": home / "org/t5",  # a role with several files resolves to their folder
    }
    # The large file came through the CDN redirect, in one GET without a Range.
    assert hub.gets("org/selva/weights/generator.pth") == [None]
    before = len(hub.requests)
    weights.download(fake, quiet=True, endpoint=hub.url)  # all present and correct: no traffic
    assert len(hub.requests) == before


def test_corrupted_file_is_detected_and_fetched_again(hub, fake, capsys):
    weights.download(fake, quiet=True, endpoint=hub.url)
    path = weights.local_path(fake.files[0])
    data = bytearray(path.read_bytes())
    data[1234] ^= 0xFF
    path.write_bytes(bytes(data))
    assert statuses(fake)[0] == weights.MD5_MISMATCH
    assert path.is_file()  # verify only reports
    weights.download(fake, endpoint=hub.url)
    err = capsys.readouterr().err
    assert "weights/generator.pth: MD5 does not match" in err and "removed it" in err
    assert statuses(fake)[0] == weights.OK
    assert len(hub.gets("org/selva/weights/generator.pth")) == 2


@pytest.fixture
def flaky(monkeypatch):
    """The hub client's retries without their pauses, and 64 KiB reads (its default of 10 MiB
    would keep nothing of a test-sized interrupted file)."""
    monkeypatch.setattr(huggingface_hub.file_download.time, "sleep", lambda s: None)
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)


def test_interrupted_download_resumes_with_range(hub, fake, flaky):
    key = "org/selva/weights/generator.pth"
    size, cut = len(hub.files[key]), 4 << 16
    hub.cut_at[key] = cut
    with pytest.raises(WeightsMissingError) as err:
        weights.download(fake, quiet=True, endpoint=hub.url)
    msg = str(err.value)
    assert "\n" not in msg and "weights/generator.pth" in msg and "again to resume" in msg
    dest = weights.local_path(fake.files[0])
    assert not dest.exists()  # nothing half-written under the real name
    (part,) = dest.parent.glob("generator.pth.*.part")
    assert part.stat().st_size == cut
    # The client's own retries already asked for the rest only.
    assert hub.gets(key)[0] is None and set(hub.gets(key)[1:]) == {f"bytes={cut}-"}
    assert hub.sent[key] == cut

    del hub.cut_at[key]
    hub.ranges.clear()
    weights.download(fake, quiet=True, endpoint=hub.url)  # a new run resumes the partial file
    assert hub.gets(key) == [f"bytes={cut}-"]
    assert hub.sent[key] == size  # the first `cut` bytes were sent once
    assert statuses(fake)[0] == weights.OK
    assert not part.exists()


def test_partial_of_another_revision_is_not_resumed(hub, fake, flaky):
    key = "org/t5/model.safetensors"
    hub.files[key] = blob(3, 3 << 16)
    hub.cut_at[key] = 2 << 16
    with pytest.raises(WeightsMissingError):
        weights.download(fake, quiet=True, endpoint=hub.url)
    assert list(weights.weights_home().rglob("model.safetensors.*.part"))
    del hub.cut_at[key]
    hub.files[key] = blob(4, 3 << 16)  # a new revision: a new ETag
    hub.ranges.clear()
    weights.download(fake, quiet=True, endpoint=hub.url)
    assert hub.gets(key) == [None]
    assert weights.local_path(fake.files[3]).read_bytes() == hub.files[key]
    assert not list(weights.weights_home().rglob("*.part"))


def test_md5_mismatch_after_download_removes_the_file(hub):
    good = publish(hub, "org/selva", "weights/odd.pth", blob(5, 3_000))
    wrong = dataclasses.replace(good, md5="0" * 32)
    with pytest.raises(CheckpointError) as err:
        weights.download(variant_of(wrong), quiet=True, endpoint=hub.url)
    assert "\n" not in str(err.value) and "0" * 32 in str(err.value)
    assert not weights.local_path(wrong).exists()


def test_missing_weights_error_is_one_line(fake):
    with pytest.raises(WeightsMissingError) as err:
        weights.resolve(fake)
    msg = str(err.value)
    assert "\n" not in msg
    for f in fake.files:
        assert f"{f.repo}/{f.path}" in msg
    assert "selva-rt weights download fake" in msg


def test_resolve_may_download(hub, fake):
    paths = weights.resolve(fake, offline=False, quiet=True, endpoint=hub.url)
    assert paths["generator"].read_bytes() == hub.files["org/selva/weights/generator.pth"]


def test_offline_mode_gives_one_line_error(hub, fake, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsMissingError) as err:
        weights.download(fake, quiet=True, endpoint=hub.url)
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and "weights/generator.pth" in msg
    assert hub.requests == []


@pytest.mark.parametrize("where", ["closed port", "internet"])
def test_no_network_gives_one_line_error(fake, where):
    if where == "closed port":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    else:
        endpoint = "https://huggingface.co"  # refused by the test's socket guard
    with pytest.raises(WeightsMissingError) as err:
        weights.download(fake, quiet=True, endpoint=endpoint)
    msg = str(err.value)
    assert "\n" not in msg and "weights/generator.pth" in msg and endpoint in msg


def test_unknown_file_gives_one_line_error(hub):
    absent = WeightFile("generator", "org/selva", "weights/absent.pth")
    with pytest.raises(WeightsMissingError) as err:
        weights.download(variant_of(absent), quiet=True, endpoint=hub.url)
    assert str(err.value).endswith("weights/absent.pth: HTTP 404")


def test_file_outside_the_hub(hub):
    """A by-hand file (Flowley's Google Drive checkpoint): the hub files are fetched, then the
    missing one is named with its source and destination; once placed, download passes it."""
    by_hand = WeightFile("generator", "org/flowley", "ema.pth", source="https://example.org/f")
    variant = variant_of(by_hand, publish(hub, "org/selva", "ext_weights/vae.pth", blob(2, 5_000)))
    with pytest.raises(WeightsMissingError) as err:
        weights.download(variant, quiet=True, endpoint=hub.url)
    message = str(err.value)
    assert "https://example.org/f" in message and str(weights.local_path(by_hand)) in message
    assert "\n" not in message
    assert weights.local_path(variant.files[1]).is_file()  # the hub file was still fetched
    assert not any("ema.pth" in path for _, path in hub.requests)  # never asked of the hub
    weights.local_path(by_hand).parent.mkdir(parents=True)
    weights.local_path(by_hand).write_bytes(b"weights")
    assert weights.download(variant, quiet=True, endpoint=hub.url) == [
        weights.local_path(f) for f in variant.files
    ]
    assert statuses(variant) == [weights.NO_MD5, weights.OK]


def test_flowley_files_name_their_sources():
    flowley = VARIANTS["flowley"]
    generator = flowley.file("generator")
    assert generator.source and generator.path == "ema_final_0-60000_step=5000.pth"
    assert all(f.source is None for f in flowley.files if f.role != "generator")


@pytest.mark.parametrize("name", ["vatt-llama", "vatt-gemma"])
def test_vatt_download_says_where_each_file_comes_from(hub, capsys, name):
    """The hub files (AudioGen's Encodec, eva02) are fetched, each with its licence; every other
    file is named with its source (the authors' Dropbox / Google Drive), destination and licence;
    the command ends with one line."""
    variant = VARIANTS[name]
    for i, f in enumerate(variant.files):
        if f.source is None:  # small stand-ins at the real repos and paths
            hub.files[f"{f.repo}/{f.path}"] = blob(i, 3_000)
    with pytest.raises(WeightsMissingError) as err:
        weights.download(variant, endpoint=hub.url)
    told = capsys.readouterr().err
    assert "\n" not in str(err.value)
    for f in variant.files:
        assert f.licence in told
        if f.source is None:
            assert f"downloading {f.repo}/{f.path}" in told
            assert weights.local_path(f).is_file()
        else:
            assert weights.by_hand_message(f) in told
            assert f.source in told and str(weights.local_path(f)) in told
    assert "CC-BY-NC 4.0" in told
    assert ("LLaMA licence" if name == "vatt-llama" else "Gemma Terms of Use") in told
