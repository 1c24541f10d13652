"""checkov on every shipped overlay: only the findings docs/OPERATING.md lists (and
justifies) may remain.

Each overlay of k8s/overlays/ is rendered (k8s/rendering.py) and scanned by checkov's
Kubernetes checks. A failed check whose id is not in the table of docs/OPERATING.md, section
"checkov", fails the run, with the resources it names; a listed id no overlay fails any
more is reported, so the table can shrink. Standard library and PyYAML only; checkov
itself lives in its own venv (`make checkov` makes it: its dependencies would clash with
the product's pins).

    python k8s/checkov.py .venv-checkov/bin/checkov [DOC]   # exit 1: an unlisted finding
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from rendering import render_overlays  # k8s/rendering.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OPERATING = ROOT / "docs" / "OPERATING.md"
SECTION = "### checkov"


def listed(doc: Path = OPERATING) -> set[str]:
    """The check ids docs/OPERATING.md's checkov table lists: `| `CKV_K8S_15` | ...`."""
    text = doc.read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\|\s*`(CKV_[A-Z0-9_]+)`", section, re.M))


def failed(checkov: str, manifest: Path) -> dict[str, set[str]]:
    """check id -> the resources that fail it."""
    done = subprocess.run(
        [checkov, "-f", str(manifest), "--framework", "kubernetes", "-o", "json", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    found: dict[str, set[str]] = {}
    for check in report.get("results", {}).get("failed_checks", []):
        found.setdefault(check["check_id"], set()).add(check["resource"])
    return found


def main(argv: list[str]) -> int:
    checkov = argv[0] if argv else "checkov"
    doc = Path(argv[1]) if len(argv) > 1 else OPERATING  # another table, for the tests
    allowed, seen, bad = listed(doc), set(), []
    with tempfile.TemporaryDirectory(prefix="sms-checkov-") as tmp:
        for overlay, text in render_overlays(K8S).items():
            manifest = Path(tmp) / f"{overlay}.yaml"
            manifest.write_text(text, encoding="utf-8")
            for check, resources in sorted(failed(checkov, manifest).items()):
                seen.add(check)
                if check not in allowed:
                    bad.append(f"{overlay}: {check} fails on {', '.join(sorted(resources))}")
    for check in sorted(allowed - seen):
        print(f"note: {check} is listed in {OPERATING.name} but no overlay fails it any more")
    for line in bad:
        print(f"error: {line} (not listed in {OPERATING.name}, section checkov)")
    print(f"checkov: {len(seen)} kinds of finding, all listed" if not bad else "")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
