"""Settings: the one place that reads the environment.

Every setting has an environment variable and a keyword of :func:`spangraph.configure`;
a keyword wins over the variable, the variable over the default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit, urlunsplit

from .exceptions import ConfigurationError

ENV_GRAPH_URL: Final = "SPANGRAPH_GRAPH_URL"
"""Graph store: ``embedded``, ``falkordb://host:port/graph``, ``neo4j://``, ``neo4j+s://``,
``bolt://`` … Default ``embedded``, or ``NEO4J_URI`` when that is set."""
ENV_REDIS_URL: Final = "SPANGRAPH_REDIS_URL"
"""Redis for live events: ``embedded``, ``redis://…``, ``rediss://…`` or ``off``."""
ENV_HOME: Final = "SPANGRAPH_HOME"
"""Data directory of the embedded server. Default: the platform's user data dir."""
ENV_PROJECT: Final = "SPANGRAPH_PROJECT"
"""Project id stamped on every span. Default ``default``."""
ENV_JAEGER_URL: Final = "SPANGRAPH_JAEGER_URL"
"""Base URL for "open in Jaeger" links. Default ``http://localhost:16686``."""
ENV_API_TOKEN: Final = "SPANGRAPH_API_TOKEN"
"""Bearer token the HTTP service requires when set."""
ENV_OFFLOAD: Final = "SPANGRAPH_OFFLOAD"
"""``1``/``true``: map and write spans in a spangraph agent process (see ``configure``)."""
ENV_PROPAGATE: Final = "SPANGRAPH_PROPAGATE"
"""``1``/``true``: carry the run's ids to other services in W3C Baggage, and take them
from it (see docs/sdk.md, "Runs across services")."""
ENV_NEO4J_URI: Final = "NEO4J_URI"
"""Neo4j URI users already have; used as the graph URL when ``SPANGRAPH_GRAPH_URL`` is unset."""
ENV_NEO4J_USER: Final = "NEO4J_USER"
"""Neo4j user name. Default ``neo4j``."""
ENV_NEO4J_PASSWORD: Final = "NEO4J_PASSWORD"
"""Neo4j password."""
ENV_NEO4J_DATABASE: Final = "NEO4J_DATABASE"
"""Neo4j database. Default: the server's default database."""

EMBEDDED: Final = "embedded"
OFF: Final = "off"
DEFAULT_PROJECT: Final = "default"
DEFAULT_JAEGER_URL: Final = "http://localhost:16686"
DEFAULT_FALKORDB_GRAPH: Final = "spangraph"

GRAPH_SCHEMES: Final = (
    "falkordb",
    "falkordbs",
    "redis",
    "rediss",
    "neo4j",
    "neo4j+s",
    "neo4j+ssc",
    "bolt",
    "bolt+s",
    "bolt+ssc",
)
NEO4J_SCHEMES: Final = ("neo4j", "neo4j+s", "neo4j+ssc", "bolt", "bolt+s", "bolt+ssc")
REDIS_SCHEMES: Final = ("redis", "rediss", "unix")


def default_home() -> Path:
    """The platform's user data dir for spangraph (e.g. ``~/.local/share/spangraph``)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("spangraph", appauthor=False))


def check_home(value: Any) -> Path:
    """``value`` as the home directory path, or a ConfigurationError naming it."""
    try:
        raw = os.fspath(value)
    except TypeError:
        raise ConfigurationError(ENV_HOME, f"must be a directory path, got {value!r}") from None
    if isinstance(raw, bytes) or not raw.strip():
        raise ConfigurationError(
            ENV_HOME, f"must be a directory path, got {value!r} (the default is {default_home()})"
        )
    if "\x00" in raw:
        raise ConfigurationError(ENV_HOME, f"contains a NUL character: {raw!r}")
    if raw != raw.strip():  # " /data/sg" would be a directory " " under the working one
        raise ConfigurationError(
            ENV_HOME, f"starts or ends with white space: {raw!r} (a quoting mistake?)"
        )
    try:
        return Path(raw).expanduser()
    except RuntimeError as exc:  # ~user of no such user
        raise ConfigurationError(ENV_HOME, f"{raw!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings. Build with :meth:`from_env` (an empty variable counts as
    unset); every field is also a keyword of :func:`spangraph.configure`."""

    graph_url: str = EMBEDDED
    redis_url: str = EMBEDDED
    home: Path = field(default_factory=default_home)
    project: str = DEFAULT_PROJECT
    jaeger_url: str = DEFAULT_JAEGER_URL
    api_token: str | None = None
    neo4j_user: str = "neo4j"
    neo4j_password: str | None = None
    neo4j_database: str | None = None
    offload: bool = False
    propagate: bool = False

    def __post_init__(self) -> None:
        _check_graph_url(self.graph_url)
        _check_redis_url(self.redis_url)
        if (
            not isinstance(self.project, str)
            or not self.project.strip()
            or len(self.project) > 1024
            or not self.project.isprintable()
        ):
            raise ConfigurationError(
                ENV_PROJECT,
                "must be a non-blank string of at most 1 024 printable characters, "
                f"got {self.project!r}",
            )
        if not isinstance(self.jaeger_url, str) or not self.jaeger_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigurationError(
                ENV_JAEGER_URL, f"must be an http:// or https:// URL, got {self.jaeger_url!r}"
            )
        if not _split(ENV_JAEGER_URL, self.jaeger_url).hostname:
            raise ConfigurationError(ENV_JAEGER_URL, f"no host in {self.jaeger_url!r}")
        _check_port(ENV_JAEGER_URL, self.jaeger_url)
        token = self.api_token
        if token is not None and (
            not isinstance(token, str) or not token.isascii() or not token.isprintable()
        ):
            # HTTP headers are read as latin-1: a UTF-8 client's non-ASCII token would
            # never match it
            raise ConfigurationError(
                ENV_API_TOKEN, "must be printable ASCII (it is sent in an HTTP header)"
            )
        if token is not None and token != token.strip():
            # HTTP drops the white space around a header's value: no request could match
            raise ConfigurationError(
                ENV_API_TOKEN,
                "has white space around it (a quoting mistake?): HTTP drops it from the "
                "Authorization header, so no request could present this token",
            )
        for setting, value, optional in (
            (ENV_NEO4J_USER, self.neo4j_user, False),
            (ENV_NEO4J_PASSWORD, self.neo4j_password, True),
            (ENV_NEO4J_DATABASE, self.neo4j_database, True),
        ):
            if not (value is None and optional) and (
                not isinstance(value, str) or "\x00" in value or not value.strip()
            ):
                shown = "***" if setting == ENV_NEO4J_PASSWORD else repr(value)
                raise ConfigurationError(setting, f"must be a non-blank string, got {shown}")
        if not isinstance(self.offload, bool):  # a str such as "no" would turn it on
            raise ConfigurationError(ENV_OFFLOAD, f"must be True or False, got {self.offload!r}")
        if not isinstance(self.propagate, bool):
            raise ConfigurationError(
                ENV_PROPAGATE, f"must be True or False, got {self.propagate!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``env`` (default ``os.environ``); ``overrides`` that are not
        ``None`` win. Unknown override names raise :class:`TypeError`."""
        env = os.environ if env is None else env
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        graph = env.get(ENV_GRAPH_URL)
        if not graph and overrides.get("graph_url") is None:
            graph = env.get(ENV_NEO4J_URI)
            if graph:  # a mistake in it is named as the variable the user set
                _check_graph_url(graph, ENV_NEO4J_URI)
        pairs = {
            "graph_url": graph,
            "redis_url": env.get(ENV_REDIS_URL),
            "home": env.get(ENV_HOME),
            "project": env.get(ENV_PROJECT),
            "jaeger_url": env.get(ENV_JAEGER_URL),
            "api_token": env.get(ENV_API_TOKEN),
            "neo4j_user": env.get(ENV_NEO4J_USER),
            "neo4j_password": env.get(ENV_NEO4J_PASSWORD),
            "neo4j_database": env.get(ENV_NEO4J_DATABASE),
        }
        for key, value in pairs.items():
            if value:
                values[key] = value
        for key, name in (("offload", ENV_OFFLOAD), ("propagate", ENV_PROPAGATE)):
            flag = env.get(name)
            if flag:
                values[key] = _flag(name, flag)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = check_home(values["home"])
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)

    def jaeger_link(self, trace_id: str | None, span_id: str | None = None) -> str | None:
        """``SPANGRAPH_JAEGER_URL/trace/{trace_id}?uiFind={span_id}`` (None without a trace)."""
        if not trace_id:
            return None
        base = self.jaeger_url.rstrip("/")
        return f"{base}/trace/{trace_id}" + (f"?uiFind={span_id}" if span_id else "")

    @property
    def graph_is_embedded(self) -> bool:
        return self.graph_url == EMBEDDED

    @property
    def redis_is_embedded(self) -> bool:
        return self.redis_url == EMBEDDED

    @property
    def live_enabled(self) -> bool:
        return self.redis_url != OFF

    @property
    def graph_is_neo4j(self) -> bool:
        return urlsplit(self.graph_url).scheme in NEO4J_SCHEMES


def url_on_port(url: str, port: int) -> str:
    """``url`` with ``port`` instead of its own (user, password, host, path kept)."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    host = parts.hostname or "localhost"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{port}"))


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    if not isinstance(url, str):
        return url
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


_PASSWORD = re.compile(r"^([^:/?#]+://[^/?#@:]*:)[^/?#]*@")
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def _split(setting: str, url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL" for an unclosed [
        raise ConfigurationError(setting, f"{exc} in {redact_url(url)!r}") from None


def _check_port(setting: str, url: str) -> None:
    try:
        port = _split(setting, url).port
    except ValueError:
        raise ConfigurationError(setting, f"bad port in {redact_url(url)!r}") from None
    if port == 0:
        raise ConfigurationError(setting, f"bad port in {redact_url(url)!r}")


def graph_url_setting(url: str, env: Mapping[str, str] | None = None) -> str:
    """The variable an error about the graph URL ``url`` names: ``NEO4J_URI`` when the
    URL came from it (``SPANGRAPH_GRAPH_URL`` unset), else ``SPANGRAPH_GRAPH_URL``."""
    env = os.environ if env is None else env
    if not env.get(ENV_GRAPH_URL) and url and env.get(ENV_NEO4J_URI) == url:
        return ENV_NEO4J_URI
    return ENV_GRAPH_URL


def _check_graph_url(url: str, setting: str = ENV_GRAPH_URL) -> None:
    """``setting``: the name the error gives (``NEO4J_URI`` when the URL came from it)."""
    if url == EMBEDDED:
        return
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            setting,
            f"expected 'embedded' or a URL such as falkordb://localhost:6379/spangraph "
            f"or neo4j://localhost:7687, got {redact_url(url)!r}",
        )
    parts = _split(setting, url)
    if parts.scheme not in GRAPH_SCHEMES:
        raise ConfigurationError(
            setting,
            f"unknown scheme {parts.scheme!r} in {redact_url(url)!r}; expected one of: "
            "embedded, " + ", ".join(f"{s}://" for s in GRAPH_SCHEMES),
        )
    if not parts.hostname:
        raise ConfigurationError(setting, f"no host in {redact_url(url)!r}")
    _check_port(setting, url)
    if parts.scheme in ("redis", "rediss") and parts.path.strip("/").isdigit():
        # the path of a graph URL names the graph: redis://host:6379/0, copied from a
        # Redis URL, wrote every span into a graph named "0" that nothing else reads
        raise ConfigurationError(
            setting,
            f"{redact_url(url)!r} ends in a Redis database number, but the path of a graph "
            "URL names the graph: use falkordb://host:port/spangraph (or leave the path "
            "out for the graph 'spangraph')",
        )


def _check_redis_url(url: str) -> None:
    if url in (EMBEDDED, OFF):
        return
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            ENV_REDIS_URL,
            f"expected 'embedded', 'off' or a redis:// URL, got {redact_url(url)!r}",
        )
    scheme = _split(ENV_REDIS_URL, url).scheme
    if scheme not in REDIS_SCHEMES:
        raise ConfigurationError(
            ENV_REDIS_URL,
            f"unknown scheme {scheme!r} in {redact_url(url)!r}; "
            "expected embedded, off, redis://, rediss://, unix:///path/to/socket",
        )
    if scheme == "unix" and not _split(ENV_REDIS_URL, url).path.strip("/"):
        raise ConfigurationError(
            ENV_REDIS_URL, f"no socket path in {redact_url(url)!r} (unix:///path/to/socket)"
        )
    database = _split(ENV_REDIS_URL, url).path.strip("/")
    if scheme != "unix" and database and not re.fullmatch(r"[0-9]+", database):
        # the client ignores it and uses database 0
        raise ConfigurationError(
            ENV_REDIS_URL,
            f"the database in {redact_url(url)!r} is a number (redis://host:6379/0), "
            f"got {database!r}",
        )
    _check_port(ENV_REDIS_URL, url)


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(name, f"expected 1/true/yes/on or 0/false/no/off, got {value!r}")
