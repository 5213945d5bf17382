"""Reading an upload: the body in bounded chunks, capped, and a multipart form parsed as it
arrives (every file part kept in memory, never spooled to disk: the container's file system
may be read-only), so a request holds at most its files' bytes and one chunk."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

# A client that sends its whole body before reading the answer (urllib, requests) gets a
# connection reset, not the 413, when the server closes while the body is still arriving. So
# the rest of a refused body is read and dropped, up to this many bytes past the cap, without
# keeping it (the lingering close of nginx and Apache); a larger body is cut off.
DRAIN_BYTES = 64 * 2**20
MAX_FILES = 64  # files in one multipart request


class UploadError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Upload:
    data: bytes
    content_type: str | None
    filename: str | None = None


async def capped_chunks(request: Request, cap: int, drain: int = DRAIN_BYTES):
    """The body's chunks as they arrive, refused with 413 as soon as it passes ``cap`` bytes
    (chunked uploads too). Before the 413, up to ``drain`` more bytes are read and dropped, so
    that a client still sending can read the answer; nothing beyond one chunk is kept here."""
    length = request.headers.get("content-length")
    stream = request.stream()
    if length is not None:
        if not length.isdigit():
            raise UploadError(400, "invalid Content-Length")
        if int(length) > cap:
            # A client that asked `Expect: 100-continue` has not sent the body and waits for
            # this answer; reading would tell it to send everything first.
            waiting = request.headers.get("expect", "").lower() == "100-continue"
            if not waiting and int(length) <= cap + drain:
                await _discard(stream, drain)
            raise UploadError(
                413,
                f"body of {int(length):,} bytes exceeds the {cap:,}-byte limit",
                {"Connection": "close"},
            )
    total = 0
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > cap:
                await _discard(stream, cap + drain - total)
                raise UploadError(
                    413, f"body exceeds the {cap:,}-byte limit", {"Connection": "close"}
                )
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise UploadError(400, "the client closed the connection before the body ended") from None


async def _discard(stream, limit: int) -> None:
    """Read and drop what is left of ``stream``, at most ``limit`` bytes."""
    seen = 0
    try:
        async for chunk in stream:
            seen += len(chunk)
            if seen > limit:
                return
    except ClientDisconnect:  # nobody left to answer
        return


async def read_uploads(request: Request, cap: int) -> list[Upload]:
    """The files of a multipart form (every part with a file name, in order), or the raw body
    as one file. Each counts toward ``cap`` as the body does; ``MAX_FILES`` at most."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        chunks = [chunk async for chunk in capped_chunks(request, cap)]
        return [Upload(b"".join(chunks), ctype or None)]
    return await _read_multipart(request, ctype, cap)


async def _read_multipart(request: Request, ctype: str, cap: int) -> list[Upload]:
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(ctype)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "malformed multipart body: no boundary in its Content-Type")
    files: list[Upload] = []
    part: dict = {}
    header = [b"", b""]

    def on_part_begin():
        part.clear()
        part.update(headers={}, data=[])

    def on_header_field(data, start, end):
        header[0] += data[start:end]

    def on_header_value(data, start, end):
        header[1] += data[start:end]

    def on_header_end():
        part["headers"][header[0].decode("latin-1").lower()] = header[1].decode("latin-1")
        header[0], header[1] = b"", b""

    def on_part_data(data, start, end):
        if part.get("data") is not None:
            part["data"].append(data[start:end])

    def on_headers_finished():
        _, disp = parse_options_header(part["headers"].get("content-disposition"))
        name = disp.get(b"filename")
        if name is None:  # a plain form field: not a file, not kept
            part["data"] = None
            return
        if len(files) >= MAX_FILES:
            raise UploadError(400, f"at most {MAX_FILES} files in one request")
        part["filename"] = name.decode("utf-8", "replace")

    def on_part_end():
        if part.get("data") is not None:
            files.append(
                Upload(
                    b"".join(part["data"]), part["headers"].get("content-type"), part["filename"]
                )
            )
        part.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in capped_chunks(request, cap):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    if not files:
        raise UploadError(400, "multipart body has no file field (send the image as 'file')")
    return files


# Formats a browser may send that we never decode: answered 415, not 400.
REFUSED_TYPES = ("application/pdf", "application/postscript", "image/svg+xml", "text/")
REFUSED_MAGIC = (b"%PDF", b"%!PS", b"\xc5\xd0\xd3\xc6", b"<svg", b"<?xml", b"8BPS")


def _refused(data: bytes, ctype: str | None) -> bool:
    if ctype and any(ctype.startswith(t) for t in REFUSED_TYPES):
        return True
    head = data[:64].lstrip()
    return any(head.startswith(m) for m in REFUSED_MAGIC)
