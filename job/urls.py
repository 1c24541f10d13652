"""Storage URLs, below every stage: their parts, their passwords, and their redaction.

Redaction works from the URL's parts, never from a pattern over the text; `redact` masks
a URL's password in any message (logs, errors, metrics, reports), `url_secrets` lists
every spelling of it a message may quote, `ambiguous_url` refuses a URL whose parsers
disagree. `job.settings.postgres_url` is the one place that puts a password into a URL.
Standard library only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

# Redaction works from the URL's parts, never from a pattern over the text. A URL's
# credentials are what lies between "://" and the "@" that ends its authority (the part
# up to the first "/", "?" or "#"); urllib and SQLAlchemy agree on that when the user and
# password are percent-encoded. When they are not (an "@", "/", "?" or "#" in a password)
# the parsers disagree, and a later "@" shows it: then everything between "://" and the
# last "@" is masked, the user too. Unsure means masked.

_SECRET_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword", "token", "secret"})


@dataclass(frozen=True)
class URLParts:
    """A URL split for display: `scheme://` + `user` + (`:***` for a password) + `@` +
    `rest`. `secret`: what is masked (the password as written, or the whole credentials
    when `sure` is False); None when the URL has no credentials."""

    scheme: str
    user: str | None
    secret: str | None
    rest: str  # after the credentials' "@" (or after "://" without credentials)
    sure: bool  # False: the credentials' end is ambiguous; all of them are masked


def url_parts(url: str) -> URLParts | None:
    """`url` split at its credentials, or None when it is no `scheme://` URL. A URL
    with no authority (`journal:///path`, `sqlite:///path`) has no credentials, whatever
    its path holds."""
    scheme, sep, rest = url.partition("://")
    if (
        not sep
        or not scheme
        or not all(c.isascii() and (c.isalnum() or c in "+.-") for c in scheme)
    ):
        return None
    if "@" not in rest or rest.startswith("/"):
        return URLParts(scheme, None, None, rest, sure=True)
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if "@" in rest[end:]:  # an "@" past the authority: a reserved character in a password
        at = rest.rfind("@")
        return URLParts(scheme, None, rest[:at], rest[at + 1 :], sure=False)
    userinfo, _, hostport = rest[:end].rpartition("@")
    user, colon, password = userinfo.partition(":")
    return URLParts(scheme, user, password if colon else None, hostport + rest[end:], sure=True)


def _mask_query(rest: str) -> str:
    """`rest` with the values of password-like query parameters (`?password=`) as ***."""
    base, mark, query = rest.partition("?")
    if not mark:
        return rest
    items = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        masked = eq and value and unquote(key).lower() in _SECRET_KEYS
        items.append(f"{key}=***" if masked else item)
    return f"{base}?{'&'.join(items)}"


def redact_url(url: str) -> str:
    """One URL with its password masked, from its parts (`url_parts`); a URL whose
    credentials are ambiguous shows none of them: `postgresql://***@host/db`."""
    parts = url_parts(url)
    if parts is None:
        return url
    rest = _mask_query(parts.rest)
    if not parts.sure:
        return f"{parts.scheme}://***@{rest}"
    if parts.user is None and parts.secret is None:
        return f"{parts.scheme}://{rest}"
    shown = parts.user or ""
    if parts.secret is not None:
        shown += ":***"
    return f"{parts.scheme}://{shown}@{rest}"


def url_secrets(url: str) -> set[str]:
    """Every spelling of `url`'s password that a message may quote: as written,
    decoded, encoded; as SQLAlchemy reads it too (it may end it elsewhere); the values of
    password-like query parameters. Empty for a URL without one."""
    found: set[str] = set()
    parts = url_parts(url)
    if parts is None:
        return found
    if parts.secret:
        # unsure: the credentials as a whole, and what follows the user's colon
        found.add(parts.secret)
        if not parts.sure and ":" in parts.secret:
            found.add(parts.secret.partition(":")[2])
    query = parts.rest.partition("?")[2]
    for item in query.split("&") if query else ():
        key, _, value = item.partition("=")
        if value and unquote(key).lower() in _SECRET_KEYS:
            found.add(value)
    if parts.secret is not None and parts.scheme.split("+")[0] not in ("journal", "sqlite"):
        try:  # what the driver would be given: SQLAlchemy's own reading of the URL
            from sqlalchemy.engine import make_url

            password = make_url(url).password
        except Exception:
            password = None
        if password:
            found.add(str(password))
    spellings = set()
    for secret in found:
        spellings |= {secret, unquote(secret), quote(unquote(secret), safe="")}
    return {s for s in spellings if s}


def _redact_word(word: str) -> str:
    """A whitespace-free piece of text, with any URL in it redacted (`redact_url`): the
    URL starts at its scheme, just before "://", and runs to the end of the piece."""
    mark = word.find("://")
    if mark <= 0:
        return word
    start = mark
    while (
        start > 0
        and word[start - 1].isascii()
        and (word[start - 1].isalnum() or word[start - 1] in "+.-")
    ):
        start -= 1
    if start == mark:
        return word
    return word[:start] + redact_url(word[start:])


def redact(text: str, url: str | None = None) -> str:
    """`text` with passwords masked as ***: every URL's own (`postgresql://u:***@h/db`,
    from its parts: `redact_url`) and, given `url`, that URL's password anywhere in
    `text` (an error message), raw, decoded or percent-encoded. For logs, reports and
    errors; the one masking function."""
    secrets = url_secrets(url) if url else set()
    if text.count("://") == 1 and url_parts(text) is not None:
        secrets |= url_secrets(text)  # a URL alone, even with a space in its password
    if "://" in text:  # else no URL: most log lines
        words = ["".join(group) for _, group in itertools.groupby(text, str.isspace)]
        text = "".join(_redact_word(word) for word in words)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def ambiguous_url(url: str) -> bool:
    """Whether `url`'s credentials or host mean different things to different readers:
    an unencoded "@", "/", "?" or "#" in a user or password (urllib ends the password at
    the last "@" of the authority, SQLAlchemy at the first "@", and both end the
    authority at the first "/"). Such a URL is refused, never guessed at."""
    parts = url_parts(url)
    if parts is None or (parts.secret is None and parts.user is None):
        return False
    if not parts.sure:
        return True
    try:
        from sqlalchemy.engine import make_url

        read = make_url(url)
        split = urlsplit(url)
        hostname = split.hostname
    except ValueError:
        return False  # unparsable: the caller's own check says so
    theirs = (read.username, read.password, (read.host or "").lower())
    ours = (
        unquote(split.username) if split.username is not None else None,
        unquote(split.password) if split.password is not None else None,
        hostname or "",
    )
    return theirs != ours or "@" in (read.host or "")
