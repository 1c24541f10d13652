"""Pin every container image of k8s/ by digest, and check that each one is: `make digests`.

A tag can be moved to other content at any time; a digest (`sha256:` of the image's
manifest) cannot, so a cluster pulls exactly what was tested. This resolves each tag
through its registry's HTTP API (the OCI distribution spec: `HEAD /v2/<repo>/manifests/
<tag>`, the `Docker-Content-Digest` the registry answers; an anonymous bearer token
where the registry asks for one, as Docker Hub, ghcr.io and quay.io do) and writes it
back, keeping the tag for the reader:

- an `image:` line naming a complete reference (`docker.io/library/postgres:16.6-bookworm`)
  becomes `…:16.6-bookworm@sha256:<digest>`, its comment kept;
- an `images:` entry of a kustomization that sets both `newName` and `newTag` (our own
  image, k8s/base/kustomization.yaml) gets a `digest:` line; kustomize then renders
  `newName:newTag@sha256:<digest>`.

An entry that sets `newTag` alone (the local-cpu overlay's image, built on the laptop
and loaded with `kind load`) names no registry image and is left by tag: `--check`
reports it as local, not as missing. Run `--write` after changing a tag and after
pushing a new image of ours; `--check` (what `make digests-check` runs) lists every
rendered container image without a digest and exits 1 when there is one.

    python k8s/digests.py --write [--tree K8S]   # resolve and write; exit 1: a registry failed
    python k8s/digests.py --check [--tree K8S]   # exit 1: an image is pinned by tag only

Registries are reached over HTTPS, except a loopback host (127.0.0.1, localhost), which
is plain HTTP: that is where the tests run a real registry (Debian's docker-registry).
Standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from rendering import K8S, render_overlays  # k8s/rendering.py, beside this script

TIMEOUT_S = 30.0
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
IMAGE_LINE = re.compile(r"^(?P<lead>\s*(?:-\s+)?image:\s*)(?P<ref>[^\s#]+)(?P<rest>.*)$")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DOCKER_HUB = ("docker.io", "registry-1.docker.io")


class DigestError(RuntimeError):
    """A registry did not give a digest: one line naming the image and why."""


@dataclass(frozen=True)
class Ref:
    """An image reference: registry host, repository, tag and, when pinned, digest."""

    host: str
    repo: str
    tag: str
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Ref | None:
        """A complete reference (`host/repo:tag[@digest]`), else None (`small-model-search`,
        a name kustomize replaces)."""
        name, _, digest = text.partition("@")
        head, _, rest = name.partition("/")
        if not rest or not ("." in head or ":" in head or head == "localhost"):
            return None
        repo, sep, tag = rest.rpartition(":")
        if not sep or "/" in tag:
            return None
        return cls(head, repo, tag, digest or None)

    def text(self, digest: str | None = None) -> str:
        pinned = digest or self.digest
        base = f"{self.host}/{self.repo}:{self.tag}"
        return f"{base}@{pinned}" if pinned else base


# --- the registry ------------------------------------------------------------------------


def _base(host: str) -> str:
    scheme = "http" if urllib.parse.urlsplit(f"//{host}").hostname in LOOPBACK else "https"
    return f"{scheme}://{'registry-1.docker.io' if host in DOCKER_HUB else host}"


def _repo(ref: Ref) -> str:
    # Docker Hub's official images live under library/
    return f"library/{ref.repo}" if ref.host in DOCKER_HUB and "/" not in ref.repo else ref.repo


def _token(challenge: str, repo: str) -> str:
    """An anonymous pull token from the realm a 401's `WWW-Authenticate: Bearer` names."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if "realm" not in fields:
        raise DigestError(f"the registry asks for {challenge.split()[0]} auth, not a token")
    query = {"service": fields.get("service", ""), "scope": f"repository:{repo}:pull"}
    url = f"{fields['realm']}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
        body = json.loads(answer.read())
    token = body.get("token") or body.get("access_token")
    if not token:
        raise DigestError(f"the token service {fields['realm']} gave no token")
    return str(token)


def _manifest(url: str, method: str, token: str | None) -> tuple[dict[str, str], bytes]:
    headers = {"Accept": ACCEPT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
        return {k.lower(): v for k, v in answer.headers.items()}, answer.read()


def resolve(ref: Ref) -> str:
    """The digest the registry serves for `ref`'s tag now."""
    repo = _repo(ref)
    url = f"{_base(ref.host)}/v2/{repo}/manifests/{urllib.parse.quote(ref.tag)}"
    token = None
    try:
        for attempt in range(2):
            try:
                headers, body = _manifest(url, "GET", token)
                break
            except urllib.error.HTTPError as exc:
                challenge = exc.headers.get("WWW-Authenticate", "")
                if exc.code != 401 or attempt or not challenge.lower().startswith("bearer"):
                    raise
                token = _token(challenge, repo)
    except urllib.error.HTTPError as exc:
        raise DigestError(f"{ref.text()}: the registry answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DigestError(f"{ref.text()}: cannot reach {_base(ref.host)}: {reason}") from None
    found = headers.get("docker-content-digest", "")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if found and found != digest:  # the body is what the digest names, or nothing is
        raise DigestError(f"{ref.text()}: the registry's digest {found} is not its manifest's")
    return digest


# --- the files -----------------------------------------------------------------------------


def yaml_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*.yaml") if p.is_file())


def pin_lines(text: str, digests: dict[str, str]) -> str:
    """`text` with every complete `image:` reference pinned to `digests[tagged ref]`."""
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        match = IMAGE_LINE.match(body)
        ref = Ref.parse(match["ref"].strip("\"'")) if match else None
        if match and ref is not None and ref.text(None).split("@")[0] in digests:
            pinned = ref.text(digests[Ref(ref.host, ref.repo, ref.tag).text()])
            body = f"{match['lead']}{pinned}{match['rest']}"
        out.append(body + line[len(line.rstrip("\n")) :])
    return "".join(out)


def kustomize_entries(text: str) -> list[dict[str, str]]:
    """The `images:` entries of a kustomization that name a registry image (newName and
    newTag both set)."""
    doc = yaml.safe_load(text) or {}
    return [
        {k: str(v) for k, v in entry.items()}
        for entry in doc.get("images", []) or []
        if isinstance(entry, dict) and entry.get("newName") and entry.get("newTag")
    ]


def pin_entries(text: str, digests: dict[str, str]) -> str:
    """`text` (a kustomization) with a `digest:` line after the `newTag:` of each entry
    whose `newName:newTag` is in `digests` (an old digest line replaced)."""
    out: list[str] = []
    name, pinned = None, False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if pinned and stripped.startswith("digest:"):
            pinned = False
            continue  # the old digest, replaced just above
        pinned = False
        if stripped.startswith("- "):
            name = None  # a new entry: its own newName, if any, comes next
        if stripped.removeprefix("- ").startswith("newName:"):
            name = _value(stripped.removeprefix("- "))
        out.append(line)
        if stripped.startswith("newTag:") and name is not None:
            ref = f"{name}:{_value(stripped)}"
            if ref in digests:
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}digest: {digests[ref]}\n")
                pinned = True
    return "".join(out)


def _value(line: str) -> str:
    """The value of a `key: value  # comment` line, unquoted."""
    return line.split(":", 1)[1].split("#")[0].strip().strip("\"'")


def references(tree: Path) -> list[Ref]:
    """Every registry image the files under `tree` name (by tag), once each."""
    found: dict[str, Ref] = {}
    for path in yaml_files(tree):
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            match = IMAGE_LINE.match(line)
            ref = Ref.parse(match["ref"].strip("\"'")) if match else None
            if ref is not None:
                found.setdefault(Ref(ref.host, ref.repo, ref.tag).text(), ref)
        if path.name == "kustomization.yaml":
            for entry in kustomize_entries(text):
                ref = Ref.parse(f"{entry['newName']}:{entry['newTag']}")
                if ref is not None:
                    found.setdefault(ref.text(), ref)
    return [Ref(r.host, r.repo, r.tag) for _, r in sorted(found.items())]


def write(tree: Path) -> list[str]:
    """Resolve every reference and pin it in place; the lines to print."""
    digests: dict[str, str] = {}
    for ref in references(tree):
        digests[ref.text()] = resolve(ref)
    lines = [f"{name}@{digest}" for name, digest in digests.items()]
    for path in yaml_files(tree):
        text = path.read_text(encoding="utf-8")
        new = pin_lines(text, digests)
        if path.name == "kustomization.yaml":
            new = pin_entries(new, digests)
        if new != text:
            path.write_text(new, encoding="utf-8")
    return lines


# --- the check ----------------------------------------------------------------------------


def rendered_images(tree: Path) -> dict[str, set[str]]:
    """image -> where it runs (`overlay/kind/name`), from every overlay rendered
    (k8s/rendering.py) and every plain manifest under tools/."""
    sources = render_overlays(tree)
    for path in sorted((tree / "tools").glob("*.yaml")):
        sources[f"tools/{path.name}"] = path.read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    for where, text in sources.items():
        for obj in yaml.safe_load_all(text):
            for image in _images(obj or {}):
                name = f"{where}/{obj['kind']}/{obj['metadata']['name']}"
                found.setdefault(image, set()).add(name)
    return found


def _images(obj: dict[str, object]) -> list[str]:
    """Every `image` value anywhere in `obj` (pods, pod templates, CronJobs' templates)."""
    out: list[str] = []
    stack: list[object] = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("image"), str):
                out.append(str(node["image"]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def unpinned(tree: Path) -> tuple[list[str], list[str]]:
    """(images by tag only that a registry serves, images built locally): one line each."""
    missing: list[str] = []
    local: list[str] = []
    for image, where in sorted(rendered_images(tree).items()):
        if DIGEST.search(image):
            continue
        line = f"{image} ({', '.join(sorted(where))})"
        # an overlay whose own kustomization sets newTag alone: a locally loaded image
        overlays = {w.split("/")[0] for w in where}
        built = all(_built_locally(tree, o, image) for o in overlays)
        (local if built else missing).append(line)
    return missing, local


def _built_locally(tree: Path, overlay: str, image: str) -> bool:
    path = tree / "overlays" / overlay / "kustomization.yaml"
    if not path.is_file():
        return False
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return any(
        isinstance(e, dict) and e.get("newTag") and not e.get("newName")
        and image == f"{e.get('name')}:{e.get('newTag')}"
        for e in doc.get("images", []) or []
    )  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="resolve every tag and pin it")
    mode.add_argument("--check", action="store_true", help="exit 1 if an image has no digest")
    parser.add_argument("--tree", type=Path, default=K8S, help="the k8s/ folder (default: ours)")
    args = parser.parse_args(argv)
    if args.write:
        try:
            for line in write(args.tree):
                print(line)
        except DigestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    missing, local = unpinned(args.tree)
    for line in local:
        print(f"local: {line}: built and loaded on the laptop, no registry digest")
    for line in missing:
        print(f"error: pinned by tag only: {line}", file=sys.stderr)
    if missing:
        print("`make digests` pins them (it needs the registries)", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
