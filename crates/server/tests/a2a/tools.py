"""A tool round trip with a baton agent through the a2a-sdk client: the agent's tool
calls come as TASK_STATE_INPUT_REQUIRED, each answered with a data part marked
`baton_type: tool_response`. Prints a JSON report.

    python tools.py BASE_URL AGENT_ID KEY
"""

import asyncio
import json
import sys
import uuid

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest, TaskState
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct, Value


def message(parts, task_id=None):
    sent = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=parts)
    if task_id:
        sent.task_id = task_id
    return sent


def answer(call):
    data = Value()
    data.struct_value.update({"tool_call_id": call["tool_call_id"], "name": call["name"], "content": {"celsius": 7}})
    marked = Struct()
    marked.update({"baton_type": "tool_response"})
    return Part(data=data, metadata=marked)


async def send(client, sent):
    events = [e async for e in client.send_message(SendMessageRequest(message=sent))]
    return events[-1].task


async def main(base, agent, key):
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=90)
    client = await ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create_from_url(f"{base}/a2a/{agent}")
    asked = await send(client, message([Part(text="weather in Oslo and Rome?")]))
    calls = [json_format.MessageToDict(p)["data"] for p in asked.status.message.parts]
    states = [TaskState.Name(asked.status.state)]
    for call in calls:
        task = await send(client, message([answer(call)], asked.id))
        states.append(TaskState.Name(task.status.state))
    texts = [p.text for a in task.artifacts for p in a.parts if p.HasField("text")]
    await client.close()
    await http.aclose()
    print(json.dumps({"calls": calls, "states": states, "texts": texts}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
