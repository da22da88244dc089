"""A conversation with a baton agent through the a2a-sdk client (PyPI, pinned by the
tests), as any A2A client would hold it. Prints one JSON report on stdout; the Rust
test (crates/server/tests/a2a.rs) checks it.

    python conversation.py BASE_URL AGENT_ID KEY [RESUME_BASE_URL] [BINDING]

With RESUME_BASE_URL (another instance on the same database), the cut stream is
resumed there. BINDING is the protocol binding the client speaks: JSONRPC (the
default) or HTTP+JSON.
"""

import asyncio
import json
import sys
import uuid
from contextlib import aclosing

import httpx
from a2a.client import ClientCallContext, ClientConfig, ClientFactory
from a2a.client.errors import A2AClientError
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError
from google.protobuf import json_format


def user(text, task_id=None):
    message = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)])
    if task_id:
        message.task_id = task_id
    return message


async def send(client, message, *, return_immediately=False, history_length=None):
    request = SendMessageRequest(message=message)
    request.configuration.return_immediately = return_immediately
    if history_length is not None:
        request.configuration.history_length = history_length
    events = [event async for event in client.send_message(request)]
    assert len(events) == 1 and events[0].HasField("task"), events
    return events[0].task


def state(task):
    return TaskState.Name(task.status.state)


def texts(parts):
    return [p.text for p in parts if p.HasField("text")]


async def main(base, agent, key, resume_base=None, binding="JSONRPC"):
    report = {"binding": binding}
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=90)
    bindings = [binding]
    factory = ClientFactory(ClientConfig(httpx_client=http, streaming=False, supported_protocol_bindings=bindings))
    client = await factory.create_from_url(f"{base}/a2a/{agent}")
    card = client._card
    report["card"] = json_format.MessageToDict(card)

    # A message, answered when its turn has ended (blocking).
    first = await send(client, user("hello there"))
    report["first"] = {
        "state": state(first),
        "id": first.id,
        "context": first.context_id,
        "artifact": [texts(a.parts) for a in first.artifacts],
        "history": [(Role.Name(m.role), texts(m.parts)) for m in first.history],
    }

    # The next message of the same task, answered at once while it runs.
    running = await send(client, user("and again", first.id), return_immediately=True)
    report["immediate"] = {"state": state(running), "id": running.id}
    # While it runs, it cannot be cancelled twice into anything else: cancel it.
    cancelled = await client.cancel_task(CancelTaskRequest(id=first.id))
    again = await client.cancel_task(CancelTaskRequest(id=first.id))
    report["cancel"] = {"state": state(cancelled), "again": state(again)}

    # GetTask with historyLength: the last messages only.
    got = await client.get_task(GetTaskRequest(id=first.id, history_length=2))
    report["get"] = {
        "state": state(got),
        "history": [(Role.Name(m.role), texts(m.parts)) for m in got.history],
    }

    # A third turn to completion, then cancelling it is refused: it has ended.
    done = await send(client, user("third", first.id), history_length=0)
    report["third"] = {"state": state(done), "artifact": [texts(a.parts) for a in done.artifacts], "history": len(done.history)}
    try:
        await client.cancel_task(CancelTaskRequest(id=first.id))
        report["not_cancelable"] = None
    except TaskNotCancelableError as err:
        report["not_cancelable"] = type(err).__name__
    try:
        await client.get_task(GetTaskRequest(id="999999"))
        report["not_found"] = None
    except TaskNotFoundError as err:
        report["not_found"] = type(err).__name__

    # The agent's tasks, newest first.
    second = await send(client, user("another task"))
    listed = await client.list_tasks(ListTasksRequest(page_size=10))
    report["list"] = [t.id for t in listed.tasks]
    report["second"] = second.id

    # Streaming: the reply as it is produced.
    streaming = ClientFactory(ClientConfig(httpx_client=http, streaming=True, supported_protocol_bindings=bindings))
    streamer = await streaming.create_from_url(f"{base}/a2a/{agent}")
    words = "one two three four five six seven eight"
    report["streamed"] = [
        json_format.MessageToDict(event)
        async for event in streamer.send_message(SendMessageRequest(message=user(words)))
    ]

    # A stream cut mid-turn, resumed after the last event id it carried: nothing lost,
    # nothing repeated.
    resumed = await send(client, user("alpha beta gamma delta epsilon zeta eta theta"), return_immediately=True)
    seen, last_id, cut_after = [], None, None
    async with aclosing(streamer.subscribe(SubscribeToTaskRequest(id=resumed.id))) as events:
        async for event in events:
            if event.HasField("artifact_update"):
                seen.extend(texts(event.artifact_update.artifact.parts))
                last_id = int(json_format.MessageToDict(event.artifact_update.metadata)["baton"]["event_id"])
                if len(seen) >= 2:
                    cut_after = last_id
                    break
    context = ClientCallContext(service_parameters={"Last-Event-ID": str(last_id)})
    resumer = streamer
    if resume_base:
        resumer = await streaming.create_from_url(f"{resume_base}/a2a/{agent}")
    final = None
    async for event in resumer.subscribe(SubscribeToTaskRequest(id=resumed.id), context=context):
        if event.HasField("artifact_update"):
            event_id = int(json_format.MessageToDict(event.artifact_update.metadata)["baton"]["event_id"])
            assert event_id > last_id, (event_id, last_id)
            seen.extend(texts(event.artifact_update.artifact.parts))
        if event.HasField("status_update"):
            final = TaskState.Name(event.status_update.status.state)
    whole = await client.get_task(GetTaskRequest(id=resumed.id, history_length=0))
    report["resume"] = {
        "resumed_at": resumer._card.supported_interfaces[0].url,
        "transport": type(resumer._transport).__name__,
        "cut_after": cut_after,
        "text": "".join(seen),
        "final": final,
        "stored": "".join(sum((texts(a.parts) for a in whole.artifacts), [])),
    }

    await streamer.close()
    await client.close()
    await http.aclose()
    print(json.dumps(report))


if __name__ == "__main__":
    args = sys.argv[1:]
    resume = args[3] if len(args) > 3 and args[3] else None
    asyncio.run(main(args[0], args[1], args[2], resume, args[4] if len(args) > 4 else "JSONRPC"))
