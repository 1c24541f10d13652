"""k8s/digests.py: every image pinned by digest, against a real registry.

The public registries cannot be reached here, so the suite runs a real one, Debian's
docker-registry (the CNCF distribution server), on loopback, pushes a small image for
each tag the manifests name, points a copy of k8s/ at it, and runs the tool as
`make digests` does. One test puts a token service in front of the registry, as Docker
Hub, ghcr.io and quay.io do (a 401 with `WWW-Authenticate: Bearer`), to show the
anonymous token flow.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from job.testing.binaries import need_binary
from job.testing.pgserver import free_port
from tests.support.kube import K8S, OVERLAYS, copy_tree, kubectl, render
from tests.support.proc import ROOT

TOOL = ROOT / "k8s" / "digests.py"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Registry:
    """docker-registry serving a temporary folder on 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = folder / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
            f"http: {{addr: '{self.host}'}}\n"
        )
        binary = need_binary(("docker-registry",), "docker-registry")
        self.proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.1)

    def _request(self, method: str, path: str, body: bytes = b"", kind: str = "") -> Any:
        url = path if path.startswith("http") else f"http://{self.host}{path}"
        headers = {"Content-Type": kind} if kind else {}
        request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
        return urllib.request.urlopen(request, timeout=10)

    def blob(self, repo: str, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._request("POST", f"/v2/{repo}/blobs/uploads/") as started:
            location = started.headers["Location"]
        if location.startswith("/"):
            location = f"http://{self.host}{location}"
        sep = "&" if "?" in location else "?"
        self._request("PUT", f"{location}{sep}digest={digest}", data, "application/octet-stream")
        return {"digest": digest, "size": len(data)}

    def push(self, repo: str, tag: str, content: str = "") -> str:
        """A one-layer image at repo:tag; the digest of its manifest."""
        config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **self.blob(repo, json.dumps(config).encode()),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **self.blob(repo, f"{repo}:{tag}:{content}".encode()),
                }
            ],
        }
        raw = json.dumps(manifest).encode()
        self._request("PUT", f"/v2/{repo}/manifests/{tag}", raw, OCI_MANIFEST)
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    server = Registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


def images_of(tree: Path) -> set[str]:
    """Every complete image reference the files of `tree` name (by tag, as shipped)."""
    found = set()
    for path in tree.rglob("*.yaml"):
        found |= set(re.findall(r"image:\s*([a-z0-9.\-]+\.[a-z]+/[^\s#\"']+)", path.read_text()))
    return found


def local_tree(tmp_path: Path, registry: Registry) -> tuple[Path, dict[str, str]]:
    """A copy of k8s/ whose registries are the local one; each image pushed there.
    Returns the tree and {image as the copy names it: its digest}."""
    tree = copy_tree(tmp_path)
    hosts = ("docker.io/", "ghcr.io/")
    for path in tree.rglob("*.yaml"):
        text = path.read_text()
        for host in hosts:
            text = text.replace(host, f"{registry.host}/")
        path.write_text(text)
    pushed = {}
    for shipped in sorted(images_of(K8S)):
        name, _, tag = shipped.rpartition(":")
        repo = name.split("/", 1)[1]
        pushed[f"{registry.host}/{repo}:{tag}"] = registry.push(repo, tag)
    base = (tree / "base" / "kustomization.yaml").read_text()
    (own,) = re.findall(r"newName: (\S+)\n\s+newTag: \"([^\"]+)\"", base)
    pushed[f"{own[0]}:{own[1]}"] = registry.push(own[0].split("/", 1)[1], own[1])
    return tree, pushed


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300
    )


def rendered_images(tree: Path) -> dict[str, set[str]]:
    kubectl()
    out: dict[str, set[str]] = {}
    for overlay in OVERLAYS:
        for obj in render(tree, overlay):
            for image in re.findall(r"'image': '([^']+)'", str(obj)):
                out.setdefault(image, set()).add(overlay)
    return out


def test_every_image_is_pinned_to_what_the_registry_serves(
    registry: Registry, tmp_path: Path
) -> None:
    tree, pushed = local_tree(tmp_path, registry)
    before = run("--check", "--tree", str(tree))
    assert before.returncode == 1 and "pinned by tag only" in before.stderr
    done = run("--write", "--tree", str(tree))
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == sorted(f"{i}@{d}" for i, d in pushed.items())
    for image, overlays in rendered_images(tree).items():
        if overlays == {"local-cpu"} and "-cpu" in image:
            assert not DIGEST.search(image)  # built on the laptop: no registry digest
            continue
        name, _, digest = image.partition("@")
        assert pushed[name] == digest, image  # the tag kept, the digest the registry's
    toolbox = (tree / "tools" / "toolbox-pod.yaml").read_text()
    assert DIGEST.search(toolbox) and "# tar, for `kubectl cp`" in toolbox  # comment kept
    after = run("--check", "--tree", str(tree))
    assert after.returncode == 0, after.stderr
    assert "local: " in after.stdout and "-cpu" in after.stdout
    # again: nothing changes; a moved tag: the new digest replaces the old
    snapshot = {p: p.read_text() for p in tree.rglob("*.yaml")}
    assert run("--write", "--tree", str(tree)).returncode == 0
    assert snapshot == {p: p.read_text() for p in tree.rglob("*.yaml")}
    moved = next(i for i in pushed if "pushgateway" in i)
    name, _, tag = moved.rpartition(":")
    new = registry.push(name.split("/", 1)[1], tag, content="rebuilt")
    assert run("--write", "--tree", str(tree)).returncode == 0
    text = (tree / "components" / "monitoring" / "pushgateway-deployment.yaml").read_text()
    assert f"{moved}@{new}" in text and pushed[moved] not in text


def test_an_unknown_tag_or_a_registry_down_is_one_line(registry: Registry, tmp_path: Path) -> None:
    tree, _ = local_tree(tmp_path, registry)
    path = tree / "base" / "postgres-statefulset.yaml"
    path.write_text(re.sub(r"(postgres):\S+", r"\1:no-such-tag", path.read_text(), count=1))
    done = run("--write", "--tree", str(tree))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "no-such-tag" in line and "404" in line
    down = free_port()
    for file in tree.rglob("*.yaml"):
        file.write_text(file.read_text().replace(registry.host, f"127.0.0.1:{down}"))
    done = run("--write", "--tree", str(tree))
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert f"cannot reach http://127.0.0.1:{down}" in done.stderr


class _TokenGate(BaseHTTPRequestHandler):
    """A registry front as Docker Hub's: /v2/ asks for a bearer token from /token."""

    upstream: ClassVar[str] = ""
    tokens: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            body = json.dumps({"token": "t0k3n"}).encode()
            self.tokens.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.headers.get("Authorization") != "Bearer t0k3n":
            realm = f"http://{self.headers['Host']}/token"
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = urllib.request.Request(
            f"http://{self.upstream}{self.path}", headers={"Accept": self.headers["Accept"]}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
            self.send_response(answer.status)
            for key in ("Content-Type", "Docker-Content-Digest"):
                if answer.headers.get(key):
                    self.send_header(key, answer.headers[key])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_registry_that_asks_for_a_token_gets_one(registry: Registry, tmp_path: Path) -> None:
    digest = registry.push("gated/app", "1.0")
    gate = type("Gate", (_TokenGate,), {"upstream": registry.host, "tokens": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), gate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tree = tmp_path / "k8s"
        (tree / "tools").mkdir(parents=True)
        host = f"127.0.0.1:{server.server_address[1]}"
        (tree / "tools" / "app-pod.yaml").write_text(f"      image: {host}/gated/app:1.0\n")
        done = run("--write", "--tree", str(tree))
        assert done.returncode == 0, done.stderr
        assert (tree / "tools" / "app-pod.yaml").read_text().strip() == (
            f"image: {host}/gated/app:1.0@{digest}"
        )
        assert gate.tokens and "scope=repository%3Agated%2Fapp%3Apull" in gate.tokens[0]
    finally:
        server.shutdown()


def test_the_shipped_tree_names_each_image_by_a_complete_reference() -> None:
    # what --write can pin: every third-party image names its registry and tag
    images = images_of(K8S)
    assert images and all(":" in i.split("/")[-1] for i in images), images
