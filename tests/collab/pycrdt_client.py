"""A second y-websocket client implementation: pycrdt's Provider over pycrdt-websocket's
HttpxWebsocket channel (httpx-ws), from PyPI (installed into .venv-collab by scripts/test).

Usage: pycrdt_client.py <base> <document> <token> <expected text> <text to append>
Syncs the document, waits until its Y.Text `content` reads <expected text>, appends <text to
append>, waits until the server has stored the result (GET /api/v1/documents/{id}) and prints
one JSON report.
"""

import json
import sys
import time
import urllib.request

import anyio
from httpx_ws import aconnect_ws
from pycrdt import Doc, Provider, Text
from pycrdt.websocket.websocket import HttpxWebsocket


def stored(base: str, document: str, token: str) -> str:
    req = urllib.request.Request(f"{base}/api/v1/documents/{document}")
    req.add_header("authorization", f"Bearer {token}")
    req.add_header("x-frontend-source", "fluxstudio")
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.load(res)["text"].get("content", "")


async def main(base: str, document: str, token: str, expected: str, append: str) -> None:
    doc = Doc()
    text = doc.get("content", type=Text)
    url = f"{base.replace('http', 'ws', 1)}/collab/{document}?token={token}"
    with anyio.fail_after(30):
        async with aconnect_ws(url) as ws:
            async with Provider(doc, HttpxWebsocket(ws, document)) as provider:
                await provider.synced.wait()
                while str(text) != expected:
                    await anyio.sleep(0.02)
                seen = str(text)
                text += append
                want = seen + append
                while stored(base, document, token) != want:
                    await anyio.sleep(0.05)
    print(json.dumps({"ok": True, "seen": seen, "stored": stored(base, document, token)}))


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:6])
    sys.exit(0)
