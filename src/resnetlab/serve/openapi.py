"""What ``/openapi.json`` says of ``/predict``'s body and of the error answers."""

from __future__ import annotations

# The request body of POST /predict in the OpenAPI document (the route reads the body itself,
# so FastAPI cannot infer it).
PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "description": "an image (JPEG, PNG, BMP, GIF, WEBP, TIFF, PPM) as the raw body, or as "
        "the file(s) of a multipart form; at most --max-body-mb in all",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "description": "one image, or several (each answered)",
                            "oneOf": [
                                {"type": "string", "format": "binary"},
                                {"type": "array", "items": {"type": "string", "format": "binary"}},
                            ],
                        }
                    },
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


_ERROR = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {"error": {"type": "string"}},
            "required": ["error"],
        }
    }
}


ERROR_RESPONSES = {
    400: {"description": "unreadable image, bad query or malformed form", "content": _ERROR},
    401: {"description": "missing or wrong API key (with --api-key)", "content": _ERROR},
    413: {"description": "body over --max-body-mb, or image over 40 Mpixel", "content": _ERROR},
    415: {"description": "a format that is never decoded (PDF, EPS, SVG, text)", "content": _ERROR},
    503: {"description": "busy: retry after Retry-After seconds", "content": _ERROR},
}
