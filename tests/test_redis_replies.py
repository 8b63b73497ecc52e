"""Which Redis error replies are a passing state of the server (retried) and which say a
write is wrong (dropped): the replies as redis-py parses them off the wire."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser

from spangraph._redis_replies import is_passing, is_unknown_command


def reply(text: str) -> BaseException:
    return BaseParser.parse_error(text)


@pytest.mark.parametrize(
    "text",
    [
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
        "persist to disk.",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "LOADING Redis is loading the dataset in memory",
        "BUSY Redis is busy running a script.",
        "READONLY You can't write against a read only replica.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    ],
)
def test_states_the_server_leaves_by_itself_are_passing(text: str) -> None:
    assert is_passing(reply(text)) and not is_unknown_command(reply(text))


def test_redis_without_the_graph_module_is_told_apart_from_a_refused_statement() -> None:
    assert is_unknown_command(
        reply("ERR unknown command 'GRAPH.QUERY', with args beginning with: 'spangraph' ")
    )
    # FalkorDB quotes the statement it refuses, values included: a value that says
    # "unknown command" made a bad statement an outage, retried for ever
    quoted = reply(
        "errMsg: Invalid input 'x': expected a property key line: 1, column: 30, offset: 29 "
        "errCtx: CREATE (:E {msg: 'ERR unknown command JSON.SET'}) x"
    )
    assert not is_unknown_command(quoted) and not is_passing(quoted)
    assert not is_passing(reply("ERR wrong number of arguments for 'graph.query' command"))
