"""A complete baton agent service: it answers each turn by streaming its words back.

    pip install standardwebhooks           # to check that baton sent the request
    AGENT_SECRET=whsec_... python agent.py --port 9000

Register it (the same secret in the server's environment, under the name you give):

    baton agent create --name py --runner http \
      --runner-config '{"url": "http://127.0.0.1:9000/turn", "secret_env": "AGENT_SECRET"}'

baton POSTs each turn as JSON, signed like its webhooks; this service answers with
newline-delimited JSON events: `text_delta`s, then `usage` and `final`. See
docs/agents.md for the protocol.
"""

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

SECRET = os.environ.get("AGENT_SECRET")


def reply_to(turn):
    """The agent's logic: here, the words of the user's message, in reverse order."""
    content = turn["message"]["content"]
    said = content.get("content", "") if content["type"] == "text" else json.dumps(content)
    return " ".join(reversed(said.split()))


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

        words = reply_to(turn).split()
        for i, word in enumerate(words):
            send({"type": "text_delta", "delta": word if i == 0 else " " + word})
            time.sleep(0.01)
        send({"type": "usage", "input_tokens": len(turn["history"]),
              "output_tokens": len(words), "total_tokens": len(turn["history"]) + len(words)})
        send({"type": "final"})

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    port = parser.parse_args().port
    server = ThreadingHTTPServer(("127.0.0.1", port), Turn)
    print(f"agent listening on {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
