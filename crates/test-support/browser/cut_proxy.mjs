// A TCP proxy in front of baton for the browser tests: a page reaches baton through it,
// and cut() closes every connection through it at once, as a dropped network would.
// `onData` sees each chunk a client sends (to read how it reconnected).
import net from "node:net";

export async function cutProxy(api, onData = () => {}) {
  const target = new URL(api);
  const open = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    open.add(client);
    open.add(upstream);
    client.on("data", onData);
    client.pipe(upstream);
    upstream.pipe(client);
    const forget = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("error", forget).on("close", forget);
    upstream.on("error", forget).on("close", forget);
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      for (const socket of open) socket.destroy();
      open.clear();
    },
    close() {
      server.close();
    },
  };
}
