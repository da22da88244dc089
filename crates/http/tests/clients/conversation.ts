// A conversation with baton through openapi-fetch, typed by openapi-typescript from
// baton's own /openapi.json; type-checked with `tsc --strict`, then run by node.
// Run by tests/clients.rs: node conversation.js BASE_URL TOKEN AGENT_ID SLOW_TOKEN SLOW_AGENT_ID
import { EventSource } from "eventsource";
import createClient from "openapi-fetch";
import type { components, paths } from "./baton.js";

type Content = components["schemas"]["Content"];

const [base, token, agent, slowToken, slowAgent] = process.argv.slice(2);

function check(condition: boolean, what: string): asserts condition {
  if (!condition) {
    throw new Error(what);
  }
}

const client = createClient<paths>({ baseUrl: base, headers: { Authorization: `Bearer ${token}` } });
const slow = createClient<paths>({ baseUrl: base, headers: { Authorization: `Bearer ${slowToken}` } });

// Create a task (the text shorthand, with free-form metadata), long-poll it to its end.
const created = await client.POST("/v1/chat/tasks", {
  body: { agent_id: Number(agent), message: { content: "hello" }, metadata: { trace: "abc" } },
});
check(created.data !== undefined, `create: ${created.response.status}`);
const taskId = created.data.task_id;
const done = await client.GET("/v1/chat/tasks/{task_id}", {
  params: { path: { task_id: taskId }, query: { wait: 30 } },
});
check(done.data?.status === "completed", `after the first turn: ${done.data?.status}`);
check(done.data.metadata?.["trace"] === "abc", "metadata comes back unchanged");

// Its event stream, read with the `eventsource` package (the browser's EventSource
// for Node, whose `fetch` option can send the key): the turn from its start to
// `final`, the text deltas adding up to the reply.
const followed = await new Promise<{ names: string[]; deltas: string }>((resolve, reject) => {
  const source = new EventSource(`${base}/v1/chat/tasks/${taskId}/stream`, {
    fetch: (input, init) =>
      fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
  });
  const seen = { names: [] as string[], deltas: "" };
  const record = (name: string) => (event: MessageEvent<string>) => {
    seen.names.push(name);
    if (name === "text_delta") seen.deltas += (JSON.parse(event.data) as { delta: string }).delta;
    if (name === "final") {
      source.close();
      resolve(seen);
    }
  };
  for (const name of ["turn_started", "text_delta", "message_completed", "final"]) {
    source.addEventListener(name, record(name));
  }
  source.addEventListener("failed", () => reject(new Error("the turn failed")));
  source.onerror = (error) => {
    source.close();
    reject(new Error(`stream: ${error.message}`));
  };
});
check(
  followed.names[0] === "turn_started" && followed.names.at(-1) === "final",
  `stream: ${JSON.stringify(followed.names)}`,
);
check(followed.deltas === "echo: hello", `streamed text: ${followed.deltas}`);

// Append a typed text part, long-poll again, read the whole history.
const again: Content = { type: "text", content: "and again" };
const appended = await client.POST("/v1/chat/tasks/{task_id}/messages", {
  params: { path: { task_id: taskId } },
  body: { agent_id: Number(agent), message: { content: again } },
});
check(appended.response.status === 202, `append: ${appended.response.status}`);
const second = await client.GET("/v1/chat/tasks/{task_id}", {
  params: { path: { task_id: taskId }, query: { wait: 30 } },
});
check(second.data?.status === "completed", `after the second turn: ${second.data?.status}`);
const page = await client.GET("/v1/chat/tasks/{task_id}/messages", {
  params: { path: { task_id: taskId }, query: { limit: 100 } },
});
check(page.data !== undefined, "history");
const texts = page.data.data.flatMap((message) => {
  const content = message.content;
  return content.type === "text" ? [content.content] : [];
});
check(
  JSON.stringify(texts) === JSON.stringify(["hello", "echo: hello", "and again", "echo: and again"]),
  `history: ${JSON.stringify(texts)}`,
);

// A busy task refuses a second message: a typed 409 envelope naming the running turn.
const busy = await slow.POST("/v1/chat/tasks", {
  body: { agent_id: Number(slowAgent), message: { content: "take your time" } },
});
check(busy.data !== undefined, `slow create: ${busy.response.status}`);
const refused = await slow.POST("/v1/chat/tasks/{task_id}/messages", {
  params: { path: { task_id: busy.data.task_id } },
  body: { agent_id: Number(slowAgent), message: { content: "now?" } },
});
check(refused.response.status === 409, `busy: ${refused.response.status}`);
check(refused.error?.error.code === "task_busy", `busy: ${JSON.stringify(refused.error)}`);

// Cancel it.
const cancelled = await slow.POST("/v1/chat/tasks/{task_id}/cancel", {
  params: { path: { task_id: busy.data.task_id } },
});
check(cancelled.data?.status === "cancelled", `cancel: ${cancelled.data?.status}`);
console.log("conversation ok");
