// Drives the console in headless Chromium (Debian's, through playwright-core) the way
// a person would — by labels, roles and visible text — against a real `baton`,
// reached through a TCP proxy that can cut every connection as a dropped network
// would. Arguments: baton's base URL, then a JSON object of what the test made:
// {slow: {agent, key}, tools: {agent, key}, adminToken, webhook}; CHROMIUM names
// the browser. Prints one JSON line of what it saw, then "console ok". With
// CONSOLE_SCREENSHOTS set to a directory, saves the main views there.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";
import { cutProxy } from "./cut_proxy.mjs";

const [api, setupJson] = process.argv.slice(2);
const setup = JSON.parse(setupJson);
const shots = process.env.CONSOLE_SCREENSHOTS;
const seen = { steps: [] };
const step = (name) => { seen.steps.push(name); };

// The page reaches baton through a proxy whose connections can be cut.
const proxy = await cutProxy(api);
const base = proxy.url;
const cut = () => proxy.cut();

// The API as another client (not through the page).
async function call(method, path, key, body) {
  const response = await fetch(`${api}${path}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: JSON.parse(process.env.CHROMIUM_FLAGS ?? "[]"),
});
const pageErrors = [];
const refused = [];
const dialogs = [];
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  page = await context.newPage();
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  // A Content-Security-Policy refusal is reported on the console, and only there.
  page.on("console", (message) => { if (/Refused to|Content Security Policy/i.test(message.text())) refused.push(message.text()); });
  page.on("dialog", (dialog) => { dialogs.push(dialog.message()); dialog.accept(); });
  const statusOf = () => page.locator("h1 .badge").getAttribute("data-status");
  const waitStatus = async (status, timeout = 20_000) => {
    await page.locator(`h1 .badge[data-status="${status}"]`).waitFor({ timeout });
  };
  const assistantText = () => page.locator(".message.assistant .text").last().textContent();

  // 1. Signing in with a wrong key says why; with the key, the tasks page.
  await page.goto(`${base}/console`);
  await page.getByLabel("Agent key", { exact: true }).fill("bt_wrong_key");
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  seen.wrongKey = await page.locator(".error").first().textContent();
  await page.getByLabel("Agent key", { exact: true }).fill(setup.slow.key);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.getByRole("heading", { name: "Tasks", exact: true }).waitFor();
  seen.bar = await page.locator("#who").textContent();
  seen.keyInUrl = page.url().includes(setup.slow.key);
  seen.keyStored = await page.evaluate(() => sessionStorage.getItem("baton.key"));
  // Focus went to the new page's heading.
  seen.focused = await page.evaluate(() => document.activeElement?.tagName);
  step("signed in");

  // 2. A task with the slow echo agent: its text streams in.
  const words = "one two three four five six seven eight nine ten eleven twelve";
  await page.getByLabel("First message", { exact: true }).fill(words);
  await page.getByRole("button", { name: "Send" }).click();
  await page.waitForURL(/#\/tasks\/\d+$/);
  seen.task = Number(page.url().split("/").pop());
  await waitStatus("running");
  await page.locator(".message.assistant .text.streaming").waitFor();
  await page.waitForFunction(() => (document.querySelector(".message.assistant .text")?.textContent ?? "").split(" ").length >= 4);
  seen.partial = await assistantText();
  step("streaming");

  // 3. A message sent while the turn runs is refused, and the page says why.
  await page.getByLabel("Message", { exact: true }).fill("are you done?");
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator(".composer .error").waitFor();
  seen.busy = await page.locator(".composer .error").textContent();

  // 3b. Queued instead: it waits in the task's queue, where it can be cancelled.
  const ifBusy = () => page.getByRole("combobox", { name: /^If a turn runs/ });
  await page.getByLabel("Message", { exact: true }).fill("queued for later");
  await ifBusy().selectOption("enqueue");
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator('.composer .accepted[data-status="queued"]').waitFor();
  seen.queuedAnswer = await page.locator(".composer .accepted").textContent();
  await page.locator(".queue li").waitFor();
  seen.queuedShown = await page.locator(".queue li").textContent();
  if (shots) await page.screenshot({ path: `${shots}/task-queue.png`, fullPage: true });
  await page.getByRole("button", { name: /^Cancel waiting message/ }).click();
  await page.locator('section[aria-labelledby="queue-heading"]').waitFor({ state: "hidden" });
  step("queued and cancelled");

  // 3c. Sent into the running turn: the echo agent takes it and answers it there.
  await page.getByLabel("Message", { exact: true }).fill("also this");
  await ifBusy().selectOption("steer");
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator('.composer .accepted[data-status="steering"]').waitFor();
  seen.steerAnswer = await page.locator(".composer .accepted").textContent();
  step("steered");
  if (shots) await page.screenshot({ path: `${shots}/task-streaming.png`, fullPage: true });

  // 4. The connection drops mid-turn: the page reconnects and resumes.
  cut();
  await page.locator(".connection[data-reconnects]").waitFor({ timeout: 10_000 });
  seen.sawReconnecting = true;
  await page.locator('.connection[data-state="live"][data-reconnects]').waitFor({ timeout: 10_000 });
  await waitStatus("completed");
  seen.reply = await page.locator(".message.assistant .text").first().textContent();
  seen.steeredReply = await assistantText();
  seen.userMessages = await page.locator(".message.user .text").allTextContents();
  seen.replies = await page.locator(".message.assistant").count();
  seen.tookShown = await page.locator("dl.facts").textContent();
  step("completed after a cut");
  if (shots) await page.screenshot({ path: `${shots}/task.png`, fullPage: true });

  // 5. Markdown is rendered, and markup in it is defused.
  await page.getByLabel("Message", { exact: true }).fill("**bold** and `code`\n\n<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>[link](javascript:window.pwned=3)");
  await page.getByRole("combobox", { name: /^Format/ }).selectOption("markdown");
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator(".message.user .markdown strong").waitFor();
  await waitStatus("completed");
  seen.markdown = await page.locator(".message.user .markdown").last().innerHTML();
  seen.pwned = await page.evaluate(() => window.pwned ?? null);
  step("markdown");

  // 5b. A file attached to a message comes back as sent.
  await page.getByLabel("Message", { exact: true }).fill("see the file");
  await page.getByLabel("Attach files", { exact: true }).setInputFiles({
    name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("baton attachment ✓\n"),
  });
  await page.getByRole("button", { name: "Send" }).click();
  await waitStatus("completed");
  const downloading = page.waitForEvent("download");
  await page.getByRole("button", { name: /^Download notes\.txt/ }).first().click();
  const download = await downloading;
  seen.downloadName = download.suggestedFilename();
  seen.downloaded = readFileSync(await download.path(), "utf8");
  step("attachment");

  // 6. Cancel a running turn: the badge says so, and the text so far is kept.
  await page.getByRole("link", { name: "← Tasks" }).click();
  await page.getByLabel("First message", { exact: true }).fill("a long answer that we will not wait for at all");
  await page.getByRole("button", { name: "Send" }).click();
  await waitStatus("running");
  seen.cancelledTask = Number(page.url().split("/").pop());
  await page.waitForFunction(() => (document.querySelector(".message.assistant .text")?.textContent ?? "").split(" ").length >= 4);
  await page.getByRole("button", { name: "Cancel the running turn" }).click();
  await waitStatus("cancelled");
  seen.cancelledText = await assistantText();
  step("cancelled");

  // 7. The list: newest first, filtered by status, badges updating live.
  await page.getByRole("link", { name: "← Tasks" }).click();
  await page.locator(`[data-task="${seen.cancelledTask}"]`).waitFor();
  const started = await call("POST", "/v1/chat/tasks", setup.slow.key, {
    agent_id: setup.slow.agent, message: { content: "started elsewhere" }, webhook: { url: setup.webhook },
  });
  seen.elsewhere = started.body.task_id;
  await page.locator(`[data-task="${seen.elsewhere}"] .badge[data-status="running"]`).waitFor({ timeout: 10_000 });
  if (shots) await page.screenshot({ path: `${shots}/tasks.png`, fullPage: true });
  await page.locator(`[data-task="${seen.elsewhere}"] .badge[data-status="completed"]`).waitFor({ timeout: 20_000 });
  seen.listOrder = await page.locator("[data-task]").evaluateAll((rows) => rows.map((row) => Number(row.dataset.task)));
  await page.getByRole("combobox", { name: /^Status/ }).selectOption("cancelled");
  await page.waitForURL(/status=cancelled/);
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("[data-task]")];
    return rows.length > 0 && rows.every((row) => row.querySelector(".badge").dataset.status === "cancelled");
  });
  seen.cancelledList = await page.locator("[data-task]").evaluateAll((rows) => rows.map((row) => Number(row.dataset.task)));
  step("list");

  // 7b. The webhook delivery of the task started elsewhere, with its attempt.
  await page.goto(`${base}/console#/tasks/${seen.elsewhere}`);
  await waitStatus("completed");
  await page.getByText("Webhook deliveries").click();
  await page.locator("details table").getByText("delivered").waitFor({ timeout: 10_000 });
  seen.deliveries = await page.locator("details table").textContent();
  seen.deliveryId = Number(await page.locator("details table tbody td").first().textContent());
  step("deliveries");

  // 8. A model asks for tools: answer each call with the form, the turn goes on.
  await page.getByRole("button", { name: "Sign out" }).click();
  seen.storedAfterSignOut = await page.evaluate(() => sessionStorage.length);
  await page.getByLabel("Agent key", { exact: true }).fill(setup.tools.key);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.getByLabel("First message", { exact: true }).fill("Weather in Oslo and Rome?");
  await page.getByRole("button", { name: "Send" }).click();
  await waitStatus("requires_action");
  await page.getByRole("form", { name: /Answer get_weather \(call_abc\)/ }).waitFor();
  seen.toolForms = await page.locator("form.tool-form").count();
  if (shots) await page.screenshot({ path: `${shots}/tool-call.png`, fullPage: true });
  // The second answer is typed first: the page updates after the first is sent, and
  // what was typed into the other form must survive it.
  const second = page.getByRole("form", { name: /call_def/ });
  await second.getByLabel(/Result of get_weather/).fill("18 degrees");
  const first = page.getByRole("form", { name: /call_abc/ });
  await first.getByLabel(/Result of get_weather/).fill('{"celsius": 4}');
  await first.getByRole("button", { name: "Send the result" }).click();
  await page.waitForFunction(() => document.querySelectorAll("form.tool-form").length === 1);
  await page.locator(".message.tool", { hasText: "celsius" }).first().waitFor({ state: "attached" });
  seen.keptTyping = await second.getByLabel(/Result of get_weather/).inputValue();
  await second.getByRole("button", { name: "Send the result" }).click();
  await waitStatus("completed");
  seen.toolReply = await assistantText();
  seen.toolResults = await page.locator(".message.assistant .tool-call ~ .tool-answer").count();
  seen.toolMessagesShown = await page.locator(".message.tool:visible").count();
  seen.reasoning = await page.locator("details.reasoning").count();
  seen.usage = await page.locator("dl.facts").textContent();
  step("tools");

  // 9. Admin: agents, a key made (shown once) and revoked.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Admin token", { exact: true }).fill(setup.adminToken);
  await page.getByRole("button", { name: "Sign in as admin" }).click();
  await page.getByRole("heading", { name: "Admin" }).waitFor();
  await page.locator(`[data-agent="${setup.slow.agent}"]`).waitFor();
  if (shots) await page.screenshot({ path: `${shots}/admin.png`, fullPage: true });
  await page.locator(`[data-agent="${setup.slow.agent}"] a`).click();
  await page.getByRole("heading", { name: /^Agent \d+: / }).waitFor();
  await page.getByRole("button", { name: "Create a key" }).click();
  const shown = page.locator("output[data-new-key]");
  await shown.waitFor();
  const newKey = (await shown.textContent()).trim();
  const prefix = await shown.getAttribute("data-new-key");
  seen.newKeyWorks = (await call("GET", "/v1/chat/agent", newKey)).status;
  await page.getByRole("button", { name: `Revoke ${prefix}` }).click();
  await page.locator(`[data-key="${prefix}"]`).getByText("revoked").waitFor();
  seen.revokedKey = (await call("GET", "/v1/chat/agent", newKey)).status;
  // Renamed, its runner config and policy changed, through the form.
  await page.getByLabel("Name", { exact: true }).fill("renamed by the console");
  await page.getByRole("textbox", { name: /^Runner config/ }).fill('{"delay_ms": 3000}');
  await page.getByLabel("Max attempts", { exact: true }).fill("5");
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("Saved.").waitFor();
  seen.renamed = (await call("GET", "/v1/chat/agent", setup.slow.key)).body.name;
  const edited = (await call("GET", `/v1/admin/agents/${setup.slow.agent}`, setup.adminToken)).body;
  seen.editedConfig = edited.runner.config;
  seen.editedAttempts = edited.policy.max_attempts;
  // Redelivery of the delivery seen above.
  await page.getByRole("link", { name: "← Agents" }).click();
  await page.getByLabel("Delivery id", { exact: true }).fill(String(seen.deliveryId));
  await page.getByRole("button", { name: "Redeliver" }).click();
  seen.redelivered = await page.getByText("The delivery is due again.").textContent();
  // A new agent, made with the form, that fails its turns; a key for it.
  await page.getByLabel("Name", { exact: true }).fill("failing");
  await page.getByRole("textbox", { name: /^Runner config/ }).fill('{"fail": true}');
  await page.getByRole("button", { name: "Create agent" }).click();
  await page.getByRole("link", { name: /^agent \d+$/ }).click();
  await page.getByRole("heading", { name: /^Agent \d+: failing$/ }).waitFor();
  await page.getByRole("button", { name: "Create a key" }).click();
  const failingKey = (await page.locator("output[data-new-key]").textContent()).trim();
  step("admin");

  // Its turn fails, and the page says why, with the code.
  await page.goto(`${base}/console#/signin`);
  await page.getByLabel("Agent key", { exact: true }).fill(failingKey);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.getByLabel("First message", { exact: true }).fill("please fail");
  await page.getByRole("button", { name: "Send" }).click();
  await waitStatus("failed");
  seen.failure = await page.locator("dl.facts").textContent();
  step("failed turn");

  // Data sent by another client shows as JSON, live.
  seen.failedTask = Number(page.url().split("/").pop());
  const failingAgent = (await call("GET", "/v1/chat/agent", failingKey)).body.agent_id;
  await call("POST", `/v1/chat/tasks/${seen.failedTask}/messages`, failingKey, {
    agent_id: failingAgent, message: { content: { type: "data", data: { city: "Oslo", days: 3 } } },
  });
  await page.locator(".message.user pre").getByText('"city": "Oslo"').waitFor();
  seen.data = await page.locator(".message.user pre").textContent();
  step("data");

  // More tasks than a page holds: "Older tasks" leads to the rest.
  for (let i = 0; i < 20; i += 1) {
    await call("POST", "/v1/chat/tasks", failingKey, { agent_id: failingAgent, message: { content: `more ${i}` } });
  }
  await page.getByRole("link", { name: "← Tasks" }).click();
  await page.locator("[data-task]").nth(19).waitFor();
  seen.firstPage = await page.locator("[data-task]").count();
  await page.getByRole("link", { name: "Older tasks" }).click();
  await page.waitForURL(/cursor=/);
  await page.waitForFunction(() => document.querySelectorAll("[data-task]").length === 1);
  seen.secondPage = await page.locator("[data-task]").evaluateAll((rows) => rows.map((row) => Number(row.dataset.task)));
  step("pages");

  // The key revoked by someone else: the page's next call is refused, and the key is
  // forgotten.
  const failingPrefix = failingKey.split("_")[1];
  seen.revokedElsewhere = (await call("DELETE", `/v1/admin/keys/${failingPrefix}`, setup.adminToken)).status;
  await page.waitForFunction(() => sessionStorage.getItem("baton.key") === null, null, { timeout: 10_000 });
  seen.afterRevoke = await page.locator("main").textContent();
  step("revoked");

  // 10. A narrow screen: nothing wider than the viewport.
  await page.setViewportSize({ width: 360, height: 780 });
  await page.goto(`${base}/console#/signin`);
  await page.getByLabel("Agent key", { exact: true }).fill(setup.slow.key);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.getByRole("heading", { name: "Tasks", exact: true }).waitFor();
  await page.goto(`${base}/console#/tasks/${seen.task}`);
  await waitStatus("completed");
  seen.narrowOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (shots) await page.screenshot({ path: `${shots}/narrow.png`, fullPage: true });
  step("narrow");

  // 11. Accessibility: axe-core's WCAG 2 A and AA rules (contrast included) on each
  // view, in a context of its own that lets the checker's script in past the CSP.
  const auditing = await browser.newContext({ bypassCSP: true, viewport: { width: 1100, height: 900 } });
  const auditPage = await auditing.newPage();
  const axe = readFileSync(new URL("./node_modules/axe-core/axe.min.js", import.meta.url), "utf8");
  seen.accessibility = {};
  const audit = async (name) => {
    await auditPage.addScriptTag({ content: axe });
    const result = await auditPage.evaluate(() => window.axe.run(document, { runOnly: ["wcag2a", "wcag2aa"] }));
    seen.accessibility[name] = result.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  };
  await auditPage.goto(`${base}/console#/signin`);
  await auditPage.getByLabel("Agent key", { exact: true }).waitFor();
  await audit("sign in");
  // Signed in with the keyboard alone: Tab to the key's field, type, Enter.
  for (let i = 0; i < 10; i += 1) {
    await auditPage.keyboard.press("Tab");
    if (await auditPage.evaluate(() => document.activeElement?.name === "key")) break;
  }
  await auditPage.keyboard.type(setup.slow.key);
  await auditPage.keyboard.press("Enter");
  await auditPage.locator("[data-task]").first().waitFor();
  seen.keyboardSignIn = await auditPage.locator("#who").textContent();
  await audit("tasks");
  await auditPage.goto(`${base}/console#/tasks/${seen.task}`);
  await auditPage.locator('.connection[data-state="live"]').waitFor();
  await audit("task");
  await auditPage.goto(`${base}/console#/signin`);
  await auditPage.getByLabel("Admin token", { exact: true }).fill(setup.adminToken);
  await auditPage.getByRole("button", { name: "Sign in as admin" }).click();
  await auditPage.locator("[data-agent]").first().waitFor();
  await audit("admin");
  await auditPage.goto(`${base}/console#/admin/agents/${setup.slow.agent}`);
  await auditPage.locator("[data-key]").first().waitFor();
  await audit("agent");
  await auditing.close();
  step("accessibility");

  seen.pageErrors = pageErrors;
  seen.refused = refused;
  seen.dialogs = dialogs;
  console.log(JSON.stringify(seen));
  console.log("console ok");
} catch (error) {
  seen.pageErrors = pageErrors;
  // Where it stood: the URL and what the page showed.
  seen.failedAt = page?.url();
  seen.failedPage = await page?.locator("main").textContent().catch(() => null);
  console.log(JSON.stringify(seen));
  throw error;
} finally {
  await browser.close();
  proxy.close();
}
