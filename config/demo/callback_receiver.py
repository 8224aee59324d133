"""The demo's status-callback receiver (.ci/demo): listens on 127.0.0.1:PORT, checks each delivery's Standard
Webhooks signature with the `svix` package (not the controller's code), and appends the ones that verify to a JSON
Lines file; a delivery whose signature does not verify is answered 401 and counted in the file as rejected.

    python callback_receiver.py PORT SECRET_FILE OUT_FILE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiohttp import web
from svix.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    port, secret_file, out_file = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    verifier = Webhook(secret_file.read_text().strip())

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verifier.verify(body, dict(request.headers))  # raises unless signed with the secret, and recent
            record = {"id": request.headers["webhook-id"], "verified": True, "data": json.loads(body)["data"]}
        except WebhookVerificationError:
            record = {"verified": False}
        with out_file.open("a") as out:
            out.write(json.dumps(record) + "\n")
        return web.Response(status=204 if record["verified"] else 401)

    app = web.Application()
    app.router.add_post("/callbacks", receive)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
