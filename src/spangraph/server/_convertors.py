"""The path convertor of ids in routes: any text, ``/`` and line breaks included.

Starlette's ``path`` convertor matches ``.*``, which stops at a line break, so a run id
holding one (the SDK and OTLP accept any text) could not be asked for: every route gave
a bare 404. Registered once, under its own name, so other apps are left as they are.
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class IdConvertor(Convertor[str]):
    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())
