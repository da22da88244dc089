// Drives headless Chromium (Debian's, through playwright-core) through page.html,
// served on an origin of its own, against baton reached through a TCP proxy that the
// page can cut. Arguments: baton's base URL, an agent key, its (slow) agent's id;
// CHROMIUM names the browser. Prints one JSON line of what the page saw, then "browser ok".
import { readFileSync } from "node:fs";
import http from "node:http";
import { chromium } from "playwright-core";
import { cutProxy } from "./cut_proxy.mjs";

const [api, key, agent] = process.argv.slice(2);

// The proxy: every connection of the page to the API goes through it, and cut()
// closes them all. Each request's head is kept, to see how the browser reconnected;
// a connection carries several requests (keep-alive).
const heads = [];
const proxy = await cutProxy(api, (chunk) => {
  const text = chunk.toString("latin1");
  if (/^(GET|HEAD|POST|PATCH|DELETE|OPTIONS) /.test(text)) heads.push(text.split("\r\n\r\n")[0]);
});
const proxied = proxy.url;

// The page's own origin: another port, so every call is cross-origin.
const html = readFileSync(new URL("./page.html", import.meta.url));
const site = http.createServer((_, response) => {
  response.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  response.end(html);
});
await new Promise((done) => site.listen(0, "127.0.0.1", done));
const origin = `http://127.0.0.1:${site.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: JSON.parse(process.env.CHROMIUM_FLAGS ?? "[]"),
});
try {
  const page = await browser.newPage();
  // Uncaught errors of the page, and what the browser reported on its console (a
  // refused CORS request is reported there, and only there).
  const pageErrors = [];
  const console_ = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => console_.push(message.text()));
  await page.exposeFunction("cut", () => proxy.cut());
  await page.goto(`${origin}/`);
  const common = { api: proxied, key, agent: Number(agent) };
  const first = await page.evaluate(
    (args) => window.followWithEventSource(args),
    { ...common, text: "one two three four five six seven eight nine ten" },
  );
  const lastId = Math.max(...first.ids);
  const second = await page.evaluate(
    (args) => window.followWithFetch(args),
    { ...common, task: first.task, lastId, text: "eleven twelve thirteen fourteen fifteen sixteen" },
  );
  const streams = heads.filter((head) => / \/v1\/chat\/tasks\/\d+\/stream/.test(head.split("\r\n")[0]));
  console.log(JSON.stringify({
    origin, first, second, pageErrors, console: console_,
    streams: streams.map((head) => ({
      line: head.split("\r\n")[0].replace(/token=[^& ]+/, "token=…"),
      lastEventId: (/^last-event-id: *(.*)$/im.exec(head) ?? [])[1] ?? null,
      authorization: /^authorization:/im.test(head),
      origin: (/^origin: *(.*)$/im.exec(head) ?? [])[1] ?? null,
    })),
  }));
  console.log("browser ok");
} finally {
  await browser.close();
  proxy.close();
  site.close();
}
