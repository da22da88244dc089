"""A complete baton agent service: it answers each turn by streaming its words back.

    pip install standardwebhooks           # to check that baton sent the request
    AGENT_SECRET=whsec_... python agent.py --port 9000

Register it (the same secret in the server's environment, under the name you give):

    baton agent create --name py --runner http \
      --runner-config '{"url": "http://127.0.0.1:9000/turn", "secret_env": "AGENT_SECRET"}'

baton POSTs each turn as JSON, signed like its webhooks; this service answers with
newline-delimited JSON events: `text_delta`s, then `usage` and `final`. See
docs/agents.md for the protocol.

Messages sent while a turn runs (`on_busy: steer`): register the agent with
`"takes_messages": true` and give this service baton's URL (`--baton`, or
`BATON_URL`). Between its words, and for `--inbox-wait-ms` after them, it takes the
messages steered into the turn from the turn's inbox, and answers each with a
message of its own.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

SECRET = os.environ.get("AGENT_SECRET")
BATON = os.environ.get("BATON_URL")
INBOX_WAIT_MS = 0


def reply_to(message):
    """The agent's logic: here, the words of the user's message, in reverse order."""
    content = message["content"]
    said = content.get("content", "") if content["type"] == "text" else json.dumps(content)
    return " ".join(reversed(said.split()))


def take_inbox(turn, wait_ms):
    """The messages steered into the turn since the last call (waiting up to
    `wait_ms` for one), from the turn's inbox; signed with the agent's secret as baton
    signs the turn. `None` once the turn has ended (409 turn_ended): stop."""
    inbox = turn.get("inbox")
    if not (inbox and BATON and SECRET):
        return []
    body = json.dumps({"attempt": inbox["attempt"], "wait_ms": wait_ms})
    msg_id = "inbox_" + uuid.uuid4().hex
    now = datetime.now(timezone.utc)
    request = urllib.request.Request(
        BATON.rstrip("/") + inbox["path"],
        data=body.encode(),
        method="POST",
        headers={
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(SECRET).sign(msg_id, now, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=wait_ms / 1000 + 10) as answer:
            return json.load(answer)["messages"]
    except urllib.error.HTTPError as err:
        if err.code == 409:
            return None
        raise


class Turn(BaseHTTPRequestHandler):
    # HTTP/1.0: the body ends when the connection closes, so events can stream.
    protocol_version = "HTTP/1.0"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if SECRET:
            try:
                turn = Webhook(SECRET).verify(body, dict(self.headers))
            except WebhookVerificationError:
                self.send_error(401, "bad signature")
                return
        else:
            turn = json.loads(body)
        if turn.get("type") != "turn":
            self.send_error(400, "not a turn")
            return

        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.end_headers()

        def send(event):
            self.wfile.write((json.dumps(event) + "\n").encode())
            self.wfile.flush()

        words = reply_to(turn["message"]).split()
        steered = []
        for i, word in enumerate(words):
            send({"type": "text_delta", "delta": word if i == 0 else " " + word})
            time.sleep(0.01)
            steered += take_inbox(turn, 0) or []
        if not steered:
            steered += take_inbox(turn, INBOX_WAIT_MS) or []
        # Each message taken mid-turn is answered by a message of its own.
        for message in steered:
            send({"type": "message", "content": {"type": "text", "content": reply_to(message)}})
        send({"type": "usage", "input_tokens": len(turn["history"]),
              "output_tokens": len(words), "total_tokens": len(turn["history"]) + len(words)})
        send({"type": "final"})

    def log_message(self, *args):
        pass


def main():
    global BATON, INBOX_WAIT_MS
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--baton", default=BATON, help="baton's URL, for the turn inbox")
    parser.add_argument("--inbox-wait-ms", type=int, default=0,
                        help="how long to wait for a steered message after the reply")
    args = parser.parse_args()
    port, BATON, INBOX_WAIT_MS = args.port, args.baton, args.inbox_wait_ms
    server = ThreadingHTTPServer(("127.0.0.1", port), Turn)
    print(f"agent listening on {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
