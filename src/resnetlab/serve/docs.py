"""``GET /docs``: the OpenAPI document as one self-contained HTML page (no script, no CDN:
it reads the same offline, behind a firewall, and in a container without egress)."""

from __future__ import annotations

import json
from html import escape

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{margin-top:2rem;border-bottom:1px solid #ddd}
.op{margin:1rem 0;padding:.6rem 1rem;border:1px solid #ddd;border-radius:6px}
.m{display:inline-block;min-width:4rem;font-weight:700;color:#fff;border-radius:4px;
   padding:0 .4rem;text-align:center;margin-right:.5rem}
.GET{background:#2b7bb9}.POST{background:#3a9a4a}
code,pre{background:#f5f5f5;border-radius:4px;padding:0 .2rem}pre{padding:.5rem;overflow:auto}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
"""


def _schema(spec: dict, schema: dict | None) -> str:
    if not schema:
        return ""
    ref = schema.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        schema = spec.get("components", {}).get("schemas", {}).get(name, schema)
    return f"<pre>{escape(json.dumps(schema, indent=2))}</pre>"


def render(spec: dict) -> str:
    info = spec.get("info", {})
    out = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(info.get('title', 'API'))} API</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(info.get('title', 'API'))} {escape(info.get('version', ''))}</h1>"
        f"<p>The machine-readable document: <a href='/openapi.json'>/openapi.json</a>. Errors "
        f'are <code>{{"error": "..."}}</code> with the status code; every answer carries '
        f"<code>X-Request-ID</code>.</p>"
    ]
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            m = method.upper()
            out.append(
                f"<div class=op><h3><span class='m {m}'>{m}</span><code>{escape(path)}"
                f"</code> {escape(op.get('summary', ''))}</h3>"
            )
            if op.get("description"):
                out.append(f"<p>{escape(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                out.append(
                    "<table><tr><th>parameter</th><th>in</th><th>type</th><th>about</th></tr>"
                )
                for p in params:
                    kind = p.get("schema", {}).get("type") or ", ".join(
                        s.get("type", "") for s in p.get("schema", {}).get("anyOf", [])
                    )
                    out.append(
                        f"<tr><td><code>{escape(p['name'])}</code></td>"
                        f"<td>{escape(p.get('in', ''))}</td><td>{escape(kind)}</td>"
                        f"<td>{escape(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            body = op.get("requestBody")
            if body:
                out.append(
                    f"<p><b>Request body</b>{' (required)' if body.get('required') else ''}"
                    f": {escape(body.get('description', ''))}</p>"
                )
                for ctype, media in body.get("content", {}).items():
                    out.append(
                        f"<p><code>{escape(ctype)}</code></p>" + _schema(spec, media.get("schema"))
                    )
            for code, resp in op.get("responses", {}).items():
                out.append(
                    f"<p><b>{escape(str(code))}</b> {escape(resp.get('description', ''))}</p>"
                )
            out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)
