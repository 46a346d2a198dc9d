"""A multipart/form-data upload passed through as it arrives, its small fields read on the way.

The gateway needs a form's `model` (and `n`, `size`, `response_format` ...) before it can route
and admit the request, but must not hold a 25 MB audio file or a set of images in memory. The
body is read until its first file part begins (clients send the text fields first: the openai
SDKs do); those bytes are kept and sent first, the rest streams through. A scanner follows the
parts all along, so fields after a file are read too (for the record). At most
TALLYGATE_MAX_FILE_BYTES are read; a declared Content-Length over it is a 413 before a byte is.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from ..errors import GatewayError, bad_request
from ..http import ClientGone, declared_length

FIELD_MAX = 4096  # a text field longer than this is not kept (a prompt is; a file is not a field)
HEAD_MAX = 1024 * 1024  # bytes read before the first file part at most (then it streams regardless)
FILE_HEAD = 4096  # bytes of the first file kept (a WAV header's duration)
_BOUNDARY = re.compile(rb'boundary="?([^";,\s]{1,200})"?', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb"\bfilename\*?=", re.IGNORECASE)


class UploadTooLarge(Exception):
    pass


def too_large(limit: int, size: int | None = None) -> GatewayError:
    said = f"{size} bytes, the limit is {limit}" if size is not None else f"the limit is {limit} bytes"
    return GatewayError(
        413, f"File too large: {said} (TALLYGATE_MAX_FILE_BYTES).", "invalid_request_error", "request_too_large"
    )


def check_upload(headers: dict, limit: int, expected: str) -> tuple[int | None, bytes]:
    """What every streamed upload (files, image edits, audio) is checked for before a byte is
    read: the declared size within the limit (413), no Content-Encoding (415: the body goes
    upstream as it is), a multipart/form-data type (400 saying what `expected` fields are).
    The declared length (None: chunked) and the content type."""
    declared = declared_length(headers)
    if declared is not None and declared > limit:
        raise too_large(limit, declared)
    encoding = headers.get(b"content-encoding")
    if encoding is not None and encoding.strip().lower() != b"identity":
        raise GatewayError(
            415,
            "Uploads are streamed as they are: send them without a Content-Encoding.",
            "invalid_request_error",
            "unsupported_content_encoding",
        )
    content_type = headers.get(b"content-type", b"")
    if not content_type.lower().startswith(b"multipart/form-data"):
        raise bad_request(f"This endpoint takes multipart/form-data ({expected}).", "invalid_request")
    return declared, content_type


class FormScanner:
    """Follows the parts of a multipart body fed in pieces: text fields' values (up to
    FIELD_MAX), whether a file part has begun, the first bytes of the first file."""

    def __init__(self, boundary: bytes) -> None:
        self.delim = b"\r\n--" + boundary
        self.buf = b"\r\n"  # the first delimiter has no CRLF before it
        self.state = "preamble"  # preamble | after | headers | value | file | done
        self.fields: dict[str, str] = {}
        self.name: str | None = None
        self.value: list[bytes] = []
        self.value_len = 0
        self.files = 0
        self.file_head = b""

    def feed(self, chunk: bytes) -> None:
        buf = self.buf + chunk
        keep = len(self.delim) - 1
        while True:
            state = self.state
            if state == "done":
                self.buf = b""
                return
            if state in ("preamble", "value", "file"):
                i = buf.find(self.delim)
                content = buf[:i] if i >= 0 else buf[: max(0, len(buf) - keep)]
                if state == "value":
                    self.value_len += len(content)
                    if self.value_len <= FIELD_MAX:
                        self.value.append(content)
                elif state == "file" and self.files == 1 and len(self.file_head) < FILE_HEAD:
                    self.file_head += content[: FILE_HEAD - len(self.file_head)]
                if i < 0:
                    self.buf = buf[len(content) :]
                    return
                if state == "value" and self.name is not None and self.value_len <= FIELD_MAX:
                    self.fields.setdefault(self.name, b"".join(self.value).decode("utf-8", "replace"))
                buf = buf[i + len(self.delim) :]
                self.state = "after"
            elif state == "after":
                if len(buf) < 2:
                    self.buf = buf
                    return
                if buf[:2] == b"--":
                    self.state = "done"
                    continue
                line = buf.find(b"\r\n")
                if line < 0:
                    self.buf = buf
                    return
                buf = buf[line + 2 :]  # CRLF (after optional transport padding)
                self.state = "headers"
            else:  # headers
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 16 * 1024:  # not a form we can follow: stop looking
                        self.state = "done"
                        continue
                    self.buf = buf
                    return
                head = buf[:end]
                buf = buf[end + 4 :]
                named = _NAME.search(head)
                self.name = named.group(1).decode("utf-8", "replace") if named else None
                if _FILENAME.search(head):
                    self.files += 1
                    self.state = "file"
                else:
                    self.value, self.value_len = [], 0
                    self.state = "value"


class FormUpload:
    """The request body of a multipart upload: its head read first (`read_head`), then the
    whole body as an async iterable for the upstream request."""

    def __init__(self, receive, headers: dict, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.declared, ctype = check_upload(headers, limit, "a file and its fields")
        found = _BOUNDARY.search(ctype)
        if found is None:
            raise bad_request("The multipart/form-data type names no boundary.", "invalid_request")
        self.content_type = ctype.decode("latin-1")
        self.scanner = FormScanner(found.group(1))
        self.head: list[bytes] = []
        self.size = 0
        self.delta = 0  # bytes a rewritten field added to the declared length
        self.more = True
        self.too_large = False
        self.gone = False

    @property
    def fields(self) -> dict[str, str]:
        return self.scanner.fields

    @property
    def file_head(self) -> bytes:
        return self.scanner.file_head

    @property
    def length(self) -> int:
        return (self.declared or 0) + self.delta

    async def _next(self) -> bytes:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.gone = True
            raise ClientGone()
        chunk = message.get("body", b"")
        self.more = message.get("more_body", False)
        if chunk:
            self.size += len(chunk)
            if self.size > self.limit:
                self.too_large = True
                raise UploadTooLarge()
            self.scanner.feed(chunk)
        return chunk

    async def read_head(self) -> None:
        """Read until the first file's first bytes (or the end): the fields before it are known."""
        scanner = self.scanner
        read = 0
        while self.more and read < HEAD_MAX:
            try:
                chunk = await self._next()
            except UploadTooLarge:
                raise too_large(self.limit) from None
            self.head.append(chunk)
            read += len(chunk)
            if scanner.state == "done" or (scanner.files and len(scanner.file_head) >= FILE_HEAD):
                break

    def replace_field(self, name: str, value: str) -> None:
        """Rewrite a text field read in the head (a route's upstream model); nothing when the
        field came after a file."""
        head = b"".join(self.head)
        pattern = re.compile(
            rb'(name="' + re.escape(name.encode()) + rb'"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n)([^\r]*)(\r\n--)'
        )
        new, count = pattern.subn(lambda m: m.group(1) + value.encode() + m.group(3), head, count=1)
        if count:
            self.delta += len(new) - len(head)
            self.head = [new]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.head:
            if chunk:
                yield chunk
        self.head = []
        while self.more:
            chunk = await self._next()
            if chunk:
                yield chunk
