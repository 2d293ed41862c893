"""A webhook receiver that verifies agentpost's Standard Webhooks signatures and prints each event.

Run it beside `make run`. First register it; the answer holds the webhook's `secret`:

    curl -s -X POST http://127.0.0.1:8080/v0/webhooks -H "Authorization: Bearer $KEY" \\
      -H 'content-type: application/json' \\
      -d '{"url": "http://127.0.0.1:9000/hook", "event_types": ["message.received"]}'

(or with the SDK: `client.webhooks.create(url=..., event_types=["message.received"]).secret`;
add `"inbox_ids": ["agent@agents.example"]` or use `/v0/inboxes/{inbox_id}/webhooks` for one
inbox). Then start the receiver with that secret:

    .venv/bin/python examples/webhook_receiver.py --port 9000 --secret whsec_...

Deliveries attempted before it listens are retried, so the order does not lose events. A
request whose signature does not verify gets 401 and is not printed; a retried or replayed
event (same `event_id`) is acknowledged but printed once.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", required=True, help="the whsec_... secret returned when the webhook was created")
    args = parser.parse_args()
    verifier = Webhook(args.secret)
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                event = verifier.verify(body, {k.lower(): v for k, v in self.headers.items()})
            except WebhookVerificationError as exc:
                self.send_response(401)
                self.end_headers()
                print(f"rejected: {exc}", flush=True)
                return
            self.send_response(204)
            self.end_headers()
            if event["event_id"] in seen:  # retries carry the same id: handle each event once
                return
            seen.add(event["event_id"])
            message = event.get("message", {})
            print(
                json.dumps(
                    {
                        "verified": True,
                        "event_type": event["event_type"],
                        "event_id": event["event_id"],
                        "from": message.get("from"),
                        "subject": message.get("subject"),
                        "extracted_text": message.get("extracted_text"),
                    }
                ),
                flush=True,
            )

        def log_message(self, *_: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{args.port}/hook", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
