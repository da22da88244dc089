"""Push notifications to an A2A client through the a2a-sdk client (PyPI, pinned by the
tests): configs sent with a message and created, read, listed and deleted on their
own; each turn's end received by a plain HTTP receiver this script runs, and read
back as the SDK's `StreamResponse`. Prints one JSON report on stdout; the Rust test
(crates/server/tests/a2a.rs) checks it, signatures included.

    python push.py BASE_URL AGENT_ID KEY [OTHER_BASE_URL] [BINDING]

With OTHER_BASE_URL (another instance on the same database), the configs are made on
one instance and the messages sent to the other. BINDING is JSONRPC (the default) or
HTTP+JSON.
"""

import asyncio
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import (
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    ListTaskPushNotificationConfigsRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError, TaskNotFoundError
from google.protobuf import json_format

received = []
received_lock = threading.Lock()
# Paths whose first push is answered 500: the server must try again.
fail_first = {"/flaky"}


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with received_lock:
            if self.path in fail_first:
                fail_first.discard(self.path)
                status = 500
            else:
                received.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode()})
                status = 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def pushes_to(path, count, within=20):
    deadline = time.time() + within
    while time.time() < deadline:
        with received_lock:
            found = [r for r in received if r["path"] == path]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} pushes to {path} expected, got {len(found)}: {received}")


def user(text, task_id=None):
    message = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)])
    if task_id:
        message.task_id = task_id
    return message


def pushed(push):
    """A push read as the SDK reads a stream's response."""
    response = json_format.Parse(push["body"], StreamResponse())
    task = response.task
    return {
        "task": task.id,
        "state": TaskState.Name(task.status.state),
        "text": [p.text for a in task.artifacts for p in a.parts if p.HasField("text")],
        "token": push["headers"].get("x-a2a-notification-token"),
        "authorization": push["headers"].get("authorization"),
    }


async def main(base, agent, key, other=None, binding="JSONRPC"):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hooks = f"http://127.0.0.1:{server.server_address[1]}"
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=90)
    factory = ClientFactory(ClientConfig(httpx_client=http, streaming=False, supported_protocol_bindings=[binding]))
    configs = await factory.create_from_url(f"{base}/a2a/{agent}")
    sender = await factory.create_from_url(f"{other or base}/a2a/{agent}")
    report = {"card": json_format.MessageToDict(configs._card), "transport": type(configs._transport).__name__}

    # A config sent with the first message: that very turn's end is pushed.
    request = SendMessageRequest(message=user("push me"))
    config = request.configuration.task_push_notification_config
    config.url = f"{hooks}/first"
    config.token = "tok-1"
    config.authentication.scheme = "Bearer"
    config.authentication.credentials = "cred-1"
    first = [e async for e in sender.send_message(request)][0].task
    report["first"] = [pushed(p) for p in pushes_to("/first", 1)]
    report["first_task"] = first.id

    # Configs of their own: one created, read back, listed with the first.
    created = await configs.create_task_push_notification_config(
        TaskPushNotificationConfig(task_id=first.id, id="second", url=f"{hooks}/flaky", token="tok-2")
    )
    got = await configs.get_task_push_notification_config(GetTaskPushNotificationConfigRequest(task_id=first.id, id="second"))
    listed = await configs.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(task_id=first.id))
    report["created"] = json_format.MessageToDict(created)
    report["got"] = json_format.MessageToDict(got)
    report["listed"] = sorted(c.id for c in listed.configs)

    # The next turn's end goes to both; the flaky receiver's first answer is a 500,
    # so its push comes on the retry.
    [e async for e in sender.send_message(SendMessageRequest(message=user("again", first.id)))]
    report["second_turn"] = {
        "first": [pushed(p) for p in pushes_to("/first", 2)][1],
        "flaky": [pushed(p) for p in pushes_to("/flaky", 1)],
    }

    # Deleted, it gets nothing more; deleting again answers the same.
    await configs.delete_task_push_notification_config(DeleteTaskPushNotificationConfigRequest(task_id=first.id, id="second"))
    await configs.delete_task_push_notification_config(DeleteTaskPushNotificationConfigRequest(task_id=first.id, id="second"))
    listed = await configs.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(task_id=first.id))
    report["after_delete"] = sorted(c.id for c in listed.configs)
    [e async for e in sender.send_message(SendMessageRequest(message=user("third", first.id)))]
    pushes_to("/first", 3)
    time.sleep(0.5)
    with received_lock:
        report["flaky_total"] = len([r for r in received if r["path"] == "/flaky"])

    # What is refused, as A2A names it.
    errors = {}
    try:
        await configs.get_task_push_notification_config(GetTaskPushNotificationConfigRequest(task_id=first.id, id="nope"))
    except TaskNotFoundError as err:
        errors["unknown_config"] = type(err).__name__
    try:
        await configs.create_task_push_notification_config(TaskPushNotificationConfig(task_id="999999", url=f"{hooks}/x"))
    except TaskNotFoundError as err:
        errors["unknown_task"] = type(err).__name__
    try:
        await configs.create_task_push_notification_config(TaskPushNotificationConfig(task_id=first.id, url="ftp://example.com/x"))
    except InvalidParamsError as err:
        errors["bad_url"] = str(err)
    report["errors"] = errors

    with received_lock:
        report["received"] = list(received)
    await configs.close()
    await sender.close()
    await http.aclose()
    server.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    args = sys.argv[1:]
    other = args[3] if len(args) > 3 and args[3] else None
    binding = args[4] if len(args) > 4 else "JSONRPC"
    asyncio.run(main(args[0], args[1], args[2], other, binding))
