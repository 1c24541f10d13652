"""A page's links and tags, and the check that a report needs nothing from elsewhere."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


class Links(HTMLParser):
    """Every src/href of a page, and the tags used."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data") and value is not None:
                self.links.append((tag, name, value))


def links_of(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


def assert_self_contained(html: str, folder: Path) -> None:
    """No script, no stylesheet or font from elsewhere, images inline, links relative."""
    page = links_of(html)
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}, page.tags
    assert "url(" not in html and "@import" not in html  # nothing pulled in by the CSS
    for tag, attr, value in page.links:
        assert not value.lower().startswith(("http:", "https:", "//")), (tag, attr, value)
        if tag == "img":
            assert value.startswith(("data:image/svg+xml;base64,", "data:image/png;base64,"))
        elif not value.startswith("#"):  # a download: a relative path to a file beside it
            assert ":" not in value and not value.startswith("/"), value
            assert (folder / value).is_file(), value
