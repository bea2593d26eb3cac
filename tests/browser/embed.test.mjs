// reddot.js embedded by another site: loaded as an ES module from the gateway (CORS),
// every transport across origins, token expiry with getToken, and a site whose origin is
// not allowed getting nothing.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launchBrowser, withStack, staticSite, watchErrors, signJwt, sleep,
} from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

// The embedding page: imports the client as a module, for its side effect. A module
// import needs CORS, which only allowed origins get; any other site falls back to a
// classic <script src> (no CORS needed), so that it can at least try the API.
const PAGE = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>embed</title></head><body>
<script type="module">
  const gateway = new URLSearchParams(location.search).get('gw');
  try {
    await import(gateway + '/reddot.js');
    window.loadedAs = 'module';
  } catch (e) {
    await new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = gateway + '/reddot.js';
      s.onload = resolve;
      s.onerror = reject;
      document.head.append(s);
    });
    window.loadedAs = 'classic';
  }
  const { Reddot } = globalThis;
  window.clients = {};
  window.start = (name, options) => {
    const log = { notifications: [], unread: [], statuses: [], tokens: 0 };
    const rd = new Reddot({ gateway, share: false, ...options,
      getToken: options.fresh ? async () => { log.tokens++; return window.mintToken(options.user); } : undefined });
    rd.on('notification', (n) => log.notifications.push(n.id));
    rd.on('unread', (u) => log.unread.push(u.badge));
    rd.on('status', (s) => log.statuses.push(s.state));
    window.clients[name] = { rd, log };
    return rd.user;
  };
  window.ready = true;
</script></body></html>`;

async function embeddingPage(context, site, stack) {
  const page = watchErrors(await context.newPage());
  await page.goto(`${site.origin}/embed.html?gw=${encodeURIComponent(stack.gatewayUrl)}`);
  await page.waitForFunction(() => window.ready === true);
  return page;
}

const logOf = (page, name) => page.evaluate((n) => window.clients[n].log, name);
const stateOf = (page, name) => page.evaluate((n) => window.clients[n].rd.status.state, name);

async function waitFor(fn, what, timeout = 5000) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeout) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

test('another site imports reddot.js as a module and uses every transport', async () => {
  const site = await staticSite({ '/embed.html': PAGE });
  try {
    await withStack({ extraOrigins: [site.origin] }, async (stack) => {
      const context = await browser.newContext();
      try {
        const page = await embeddingPage(context, site, stack);
        assert.equal(await page.evaluate(() => window.loadedAs), 'module');
        for (const transport of ['sse', 'ws', 'longpoll', 'poll', 'iframe']) {
          const user = `embed-${transport}`;
          await page.evaluate(([name, token, t]) => window.start(name, { token, transport: t, pollInterval: 300 }),
            [transport, await stack.token(user), transport]);
          await waitFor(async () => (await stateOf(page, transport)) === 'open', `${transport} open`);
          const n = await stack.notify(user, `cross-origin ${transport}`);
          await waitFor(async () => (await logOf(page, transport)).notifications.includes(n.id), `${transport} delivery`, 2000);
          // list, markRead (a CORS preflighted POST) and the badge.
          const page1 = await page.evaluate((name) => window.clients[name].rd.list({ limit: 5 }), transport);
          assert.deepEqual(page1.items.map((i) => i.id), [n.id]);
          const answer = await page.evaluate(([name, id]) => window.clients[name].rd.markRead([id]), [transport, n.id]);
          assert.equal(answer.changed, 1);
          assert.equal(answer.unread.count, 0);
          assert.equal((await logOf(page, transport)).unread.at(-1), 0);
          // remove(): DELETE, gone from the inbox.
          await page.evaluate(([name, id]) => window.clients[name].rd.remove(id), [transport, n.id]);
          const page2 = await page.evaluate((name) => window.clients[name].rd.list(), transport);
          assert.deepEqual(page2.items, []);
          await page.evaluate((name) => window.clients[name].rd.close(), transport);
        }
        assert.deepEqual(page.errors, []);
      } finally {
        await context.close();
      }
    });
  } finally {
    await site.close();
  }
});

test('tokens expire mid-stream: getToken gives a new one and the stream resumes', async () => {
  const site = await staticSite({ '/embed.html': PAGE });
  try {
    await withStack({ extraOrigins: [site.origin] }, async (stack) => {
      const context = await browser.newContext();
      try {
        const page = await embeddingPage(context, site, stack);
        await page.exposeFunction('mintToken', (user) => stack.token(user));
        const secret = stack.env.REDDOT_JWT_SECRET;
        const transports = ['sse', 'ws', 'iframe'];
        const expiry = Math.floor(Date.now() / 1000) + 3;
        for (const transport of transports) {
          const user = `expiring-${transport}`;
          const short = signJwt(secret, { sub: user, exp: expiry });
          await page.evaluate(([name, token, t, u]) => window.start(name, { token, transport: t, user: u, fresh: true }),
            [transport, short, transport, user]);
        }
        const firsts = {};
        for (const transport of transports) {
          await waitFor(async () => (await stateOf(page, transport)) === 'open', `${transport} open`);
          firsts[transport] = (await stack.notify(`expiring-${transport}`, 'before expiry')).id;
        }
        // Past exp: each session got token_expired, asked getToken, and resumed.
        await sleep(Math.max(0, expiry * 1000 - Date.now()) + 500);
        for (const transport of transports) {
          await waitFor(async () => (await logOf(page, transport)).tokens >= 1, `${transport} getToken`);
          await waitFor(async () => (await stateOf(page, transport)) === 'open', `${transport} open again`);
          const later = (await stack.notify(`expiring-${transport}`, 'after expiry')).id;
          await waitFor(async () => (await logOf(page, transport)).notifications.includes(later), `${transport} after expiry`);
          const log = await logOf(page, transport);
          assert.deepEqual(log.notifications, [firsts[transport], later], `${transport}: each once`);
          assert.ok(log.statuses.includes('reconnecting'), `${transport}: ${log.statuses}`);
        }
      } finally {
        await context.close();
      }
    });
  } finally {
    await site.close();
  }
});

test('a site whose origin is not allowed cannot read anything', async () => {
  const site = await staticSite({ '/embed.html': PAGE });
  try {
    await withStack({}, async (stack) => {
      const context = await browser.newContext();
      try {
        const page = await embeddingPage(context, site, stack);
        // No CORS for this origin, not even for the script.
        assert.equal(await page.evaluate(() => window.loadedAs), 'classic');
        await page.evaluate((token) => window.start('x', { token, transport: 'sse', maxBackoff: 1000 }),
          await stack.token('mallory-victim'));
        const listed = await page.evaluate(() => window.clients.x.rd.list().then(() => 'listed', (e) => `refused: ${e.message}`));
        assert.match(listed, /^refused/);
        await stack.notify('mallory-victim', 'secret');
        await sleep(1500);
        const log = await logOf(page, 'x');
        assert.deepEqual(log.notifications, []);
        assert.ok(!log.statuses.includes('open'), String(log.statuses));
      } finally {
        await context.close();
      }
    });
  } finally {
    await site.close();
  }
});
