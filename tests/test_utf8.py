"""_utf8: text for the wire, lone surrogates and all."""

from __future__ import annotations

import os

from spangraph._utf8 import mended, mended_value, utf8

FFFD = "\ufffd"


def test_encodable_text_is_plain_utf8() -> None:
    for text in ["", "ascii", "日本 🚀 \u2028", "nul \x00 stays"]:
        assert utf8(text) == text.encode()


def test_lone_surrogates_become_replacement_characters() -> None:
    name = os.fsdecode(b"report-\xff\xfe.txt")  # what a non-UTF-8 file name decodes to
    assert utf8(name) == f"report-{FFFD}{FFFD}.txt".encode()
    assert utf8("\ud800日\udfff🚀") == f"{FFFD}日{FFFD}🚀".encode()


def test_mended_command_arguments() -> None:
    assert mended(("EVALSHA", "a\udc80", 3, b"raw")) == (b"EVALSHA", f"a{FFFD}".encode(), 3, b"raw")


def test_mended_values_keep_their_shape() -> None:
    value = {"k\udc80": ["v\udc81", ("t\udc82", 1)], "n": None, "f": 1.5}
    assert mended_value(value) == {f"k{FFFD}": [f"v{FFFD}", (f"t{FFFD}", 1)], "n": None, "f": 1.5}
    assert mended_value("plain") == "plain"
