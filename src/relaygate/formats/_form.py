"""A client's form as it arrives (multipart/form-data, with python-multipart's streaming parser):
every text field in order, bounded in number and size, and at most one file, written to a spool
(memory up to SPOOL_MEMORY, then a temporary file) as its bytes come, so an upload is never held
whole in memory. Used by the upload routes (http/uploads.py, fed from `receive`) and by the
seed routes' form bodies (formats/seed.py, fed the body they read)."""

from __future__ import annotations

import tempfile
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from relaygate.errors import InvalidRequest

MAX_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024
MAX_HEADER_BYTES = 8 * 1024  # one part's header lines together
SPOOL_MEMORY = 1024 * 1024


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type (400 for another type or none)."""
    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("The body must be multipart/form-data with a boundary.")
    return boundary


class FormReader:
    """`feed` each piece of the body, then `finish`; `fields`, and the file (when `file_field`
    names the part that may carry one: any other file part is a 400)."""

    def __init__(self, content_type: str | None, file_field: str | None = None) -> None:
        self.fields: list[tuple[str, str]] = []
        self.file_field = file_field
        self.file_name: str | None = None  # the file part's field, once one began
        self.filename = ""
        self.file_type = ""
        self.file_size = 0
        self.spool: IO[bytes] | None = None
        self._name: str | None = None
        self._value = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._field, self._header_value, self._header_bytes = b"", b"", 0
        self._in_file = False
        callbacks = {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_header_field": self._header_name,
            "on_header_value": self._header_val,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
        }
        self._parser = MultipartParser(boundary_of(content_type), callbacks)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except FormParserError:
            raise InvalidRequest("The multipart body is malformed.") from None

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except FormParserError:
            raise InvalidRequest("The multipart body is malformed.") from None
        if self._name is not None or self._in_file:
            raise InvalidRequest("The multipart body ended inside a part.")

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

    # --- the parser's callbacks ---------------------------------------------------------------
    def _begin(self) -> None:
        self._headers, self._header_bytes = [], 0

    def _header_name(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._count(end - start)

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._count(end - start)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise InvalidRequest("A multipart part's headers are too long.")

    def _header_end(self) -> None:
        self._headers.append((self._field.lower(), self._header_value))
        self._field, self._header_value = b"", b""

    def _headers_done(self) -> None:
        head = dict(self._headers)
        _, options = parse_options_header(head.get(b"content-disposition", b""))
        if b"name" not in options:
            raise InvalidRequest("A multipart part has no name in its Content-Disposition.")
        name = _text(options[b"name"])
        if b"filename" not in options:
            if len(self.fields) >= MAX_FIELDS:
                raise InvalidRequest(f"The form has more than {MAX_FIELDS} fields.")
            self._name, self._value = name, bytearray()
            return
        if name != self.file_field or self.spool is not None:
            raise InvalidRequest(f"Unexpected file in the form field '{name}'.", param=name)
        self.file_name, self.filename = name, _text(options[b"filename"])
        self.file_type = _text(head.get(b"content-type", b""))
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        self._in_file = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            assert self.spool is not None
            self.spool.write(data[start:end])
            self.file_size += end - start
            return
        if len(self._value) + end - start > MAX_FIELD_BYTES:
            raise InvalidRequest(
                f"The form field '{self._name}' is over {MAX_FIELD_BYTES} bytes.", param=self._name
            )
        self._value += data[start:end]

    def _end(self) -> None:
        if self._in_file:
            self._in_file = False
        elif self._name is not None:
            self.fields.append((self._name, _text(bytes(self._value))))
            self._name = None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("A form field is not UTF-8 text.") from None
