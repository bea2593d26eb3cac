// reddot.js when things go wrong around it: the app's token endpoint failing, a token
// replaced in a tab that does not hold the connection, reads and deletes that fail,
// listeners that throw, and a stored cursor the gateway's database no longer reaches.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  launchBrowser, withStack, staticSite, watchErrors, openDemo, waitState, signJwt, sleep, waitFor,
} from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

// An app page of another (allowed) origin. `make` starts a client whose getToken fails
// `failTokens` times before it mints a token again.
const PAGE = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>app</title></head><body>
<script>
  const gateway = new URLSearchParams(location.search).get('gw');
  const s = document.createElement('script');
  s.src = gateway + '/reddot.js';
  s.onload = () => { window.ready = true; };
  document.head.append(s);
  window.make = (options) => {
    const log = { notifications: [], badges: [], statuses: [], resets: [], tokenCalls: 0 };
    let failTokens = options.failTokens || 0;
    const rd = new Reddot({ gateway, share: false, minBackoff: 100, maxBackoff: 500, ...options,
      getToken: async () => {
        log.tokenCalls++;
        if (failTokens > 0) { failTokens--; throw new Error('token endpoint down'); }
        return window.mintToken(options.user);
      } });
    rd.on('notification', (n) => log.notifications.push(n.id));
    rd.on('unread', (u) => log.badges.push(u.badge));
    rd.on('status', (st) => log.statuses.push(st.state + (st.reason ? ':' + st.reason : '')));
    rd.on('reset', (r) => log.resets.push(r.reason));
    window.rd = rd;
    window.log = log;
  };
</script></body></html>`;

async function appPage(context, site, stack) {
  const page = watchErrors(await context.newPage());
  await page.exposeFunction('mintToken', (user) => stack.token(user));
  await page.goto(`${site.origin}/app.html?gw=${encodeURIComponent(stack.gatewayUrl)}`);
  await page.waitForFunction(() => window.ready === true);
  return page;
}

const logOf = (page) => page.evaluate(() => window.log);
const badgeOf = async (page) => (await logOf(page)).badges.at(-1);
/** The badge the client would show now (its next `unread` event), emitted or not. */
const badgeNow = (page) => page.evaluate(() => window.rd.unread && window.rd.unread.badge);

async function withApp(fn) {
  const site = await staticSite({ '/app.html': PAGE });
  try {
    await withStack({ extraOrigins: [site.origin] }, async (stack) => {
      const context = await browser.newContext();
      try {
        // The last argument opens another tab of the app.
        await fn(stack, await appPage(context, site, stack), context, () => appPage(context, site, stack));
      } finally {
        await context.close();
      }
    });
  } finally {
    await site.close();
  }
}

test('a getToken that fails once is asked again, and the stream resumes', async () => {
  await withApp(async (stack, page) => {
    const user = 'token-flaky';
    const expiry = Math.floor(Date.now() / 1000) + 3;
    const short = signJwt(stack.env.REDDOT_JWT_SECRET, { sub: user, exp: expiry });
    await page.evaluate(([token, u]) => window.make({ token, user: u, transport: 'sse', failTokens: 1 }),
      [short, user]);
    await waitFor(async () => (await page.evaluate(() => window.rd.status.state)) === 'open',
      { message: 'open' });
    await sleep(Math.max(0, expiry * 1000 - Date.now()) + 500);

    // The first getToken fails: the client backs off and asks again, never gives up.
    await waitFor(async () => (await logOf(page)).tokenCalls >= 2, { timeout: 10_000, message: 'getToken asked again' });
    await waitFor(async () => (await page.evaluate(() => window.rd.status.state)) === 'open',
      { timeout: 10_000, message: 'open again' });
    const later = (await stack.notify(user, 'after the token came back')).id;
    await waitFor(async () => (await logOf(page)).notifications.includes(later), { message: 'delivered' });
    const log = await logOf(page);
    assert.ok(log.statuses.includes('reconnecting:token_refresh_failed'), log.statuses.join(' '));
    assert.ok(!log.statuses.some((st) => st.startsWith('unauthorized')), log.statuses.join(' '));
  });
});

test('a read or delete that fails puts the server count back on the badge', async () => {
  await withApp(async (stack, page, context) => {
    const user = 'reads-fail';
    for (let i = 0; i < 3; i++) await stack.notify(user, `old ${i}`);
    await page.evaluate(([token, u]) => window.make({ token, user: u, transport: 'sse' }),
      [await stack.token(user), user]);
    await waitFor(async () => (await badgeOf(page)) === 3, { message: 'badge 3' });
    const live = (await stack.notify(user, 'live')).id;
    await waitFor(async () => (await badgeOf(page)) === 4, { message: 'badge 4 with the live one' });

    // A read naming an unknown id: 404, and the live one is not read.
    const refused = await page.evaluate((id) => window.rd.markRead([id, 999999]).then(
      () => 'resolved', (e) => `rejected ${e.status}`), live);
    assert.equal(refused, 'rejected 404');
    await waitFor(async () => (await badgeNow(page)) === 4, { message: 'badge back to 4 after the 404' });

    // markAllRead and remove cut off by the network.
    await context.route(/\/v1\/notifications\/(read|\d+)$/, (route) => route.abort('connectionreset'));
    for (const call of ['markAllRead', 'remove']) {
      const outcome = await page.evaluate(([c, id]) => (c === 'remove' ? window.rd.remove(id) : window.rd.markAllRead())
        .then(() => 'resolved', () => 'rejected'), [call, live]);
      assert.equal(outcome, 'rejected', call);
      await waitFor(async () => (await badgeNow(page)) === 4, { message: `badge back to 4 after ${call}` });
    }
    const server = await (await fetch(`${stack.gatewayUrl}/v1/unread`, {
      headers: { authorization: `Bearer ${await stack.token(user)}` },
    })).json();
    assert.equal(server.count, 4);
  });
});

test('a listener that throws when called at once still gets its unsubscribe function', async () => {
  await withApp(async (stack, page) => {
    const user = 'throwing-listener';
    await page.evaluate(([token, u]) => window.make({ token, user: u, transport: 'sse' }),
      [await stack.token(user), user]);
    await waitFor(async () => (await page.evaluate(() => window.rd.status.state)) === 'open', { message: 'open' });
    const got = await page.evaluate(() => {
      window.onerror = () => true; // the rethrown error is the test's own
      const off = window.rd.on('status', () => { throw new Error('listener bug'); });
      return typeof off;
    });
    assert.equal(got, 'function');
  });
});

test('setToken in a tab that does not hold the connection revives the shared one', async () => {
  await withStack({}, async (stack) => {
    const context = await browser.newContext();
    try {
      const user = 'token-in-follower';
      const expiry = Math.floor(Date.now() / 1000) + 3;
      const short = signJwt(stack.env.REDDOT_JWT_SECRET, { sub: user, exp: expiry });
      // The demo's getToken returns the same token: past exp both tabs are unauthorized.
      const tabs = [await openDemo(context, stack, short), await openDemo(context, stack, short)];
      for (const tab of tabs) await waitState(tab);
      const leaders = await Promise.all(tabs.map((t) => t.evaluate(() => window.demo.rd.isLeader)));
      assert.equal(leaders.filter(Boolean).length, 1, `leaders: ${leaders}`);
      for (const tab of tabs) await waitState(tab, 'unauthorized', 15_000);

      const follower = tabs[leaders.indexOf(false)];
      const fresh = await stack.token(user);
      await follower.evaluate((t) => window.demo.rd.setToken(t), fresh);
      for (const tab of tabs) await waitState(tab, 'open', 10_000);
      const later = (await stack.notify(user, 'after setToken')).id;
      for (const tab of tabs) {
        await tab.waitForFunction((id) => window.demo.received.includes(id), later, { timeout: 5000 });
      }
    } finally {
      await context.close();
    }
  });
});

test('a tab that saw no notification yet takes over from the last leader\'s cursor', async () => {
  await withApp(async (stack, first, context, anotherTab) => {
    const user = 'handover';
    const token = await stack.token(user);
    const tabs = [first, await anotherTab()];
    // Started together: neither has a cursor when it starts (nor lists the inbox).
    await Promise.all(tabs.map((tab) => tab.evaluate(([t, u]) => window.make({ token: t, user: u, share: true }),
      [token, user])));
    const state = (tab) => tab.evaluate(() => window.rd.status.state);
    for (const tab of tabs) await waitFor(async () => (await state(tab)) === 'open', { message: 'open' });
    const leaders = await Promise.all(tabs.map((t) => t.evaluate(() => window.rd.isLeader)));
    assert.equal(leaders.filter(Boolean).length, 1, `leaders: ${leaders}`);
    const [leader, follower] = leaders[0] ? tabs : [tabs[1], tabs[0]];
    assert.equal(await follower.evaluate(() => window.rd.lastEventId), null);

    // A slow count (a busy gateway) widens the handover, as a slow network would.
    await context.route(/\/v1\/unread/, async (route) => { await sleep(1000); await route.continue(); });
    await leader.close();
    const during = (await stack.notify(user, 'during the handover')).id;
    await waitFor(async () => (await logOf(follower)).notifications.includes(during),
      { timeout: 8000, message: 'the notification posted during the handover' });
    assert.ok(await follower.evaluate(() => window.rd.isLeader));
  });
});

test('a stored cursor ahead of the gateway (its database restored) goes back, and new notifications arrive', async () => {
  await withApp(async (stack, page) => {
    for (const transport of ['sse', 'ws']) {
      const user = `restored-${transport}`;
      const before = (await stack.notify(user, 'before the restore')).id;
      // The cursor an earlier database left in this browser, far past today's ids.
      await page.evaluate(([u, t]) => {
        const gw = new URLSearchParams(location.search).get('gw');
        localStorage.setItem(`reddot:${new URL(gw).origin}:${u}:cursor`, '100000');
        return window.rd ? window.rd.close() : undefined;
      }, [user, transport]);
      await page.evaluate(([token, u, t]) => window.make({ token, user: u, transport: t }),
        [await stack.token(user), user, transport]);
      await waitFor(async () => (await logOf(page)).resets.includes('cursor_ahead'),
        { message: `${transport}: reset for the cursor ahead` });
      await waitFor(async () => (await page.evaluate(() => window.rd.status.state)) === 'open',
        { message: `${transport}: open again` });
      assert.equal(await page.evaluate(() => window.rd.lastEventId), before);

      const live = (await stack.notify(user, 'after the restore')).id;
      await waitFor(async () => (await logOf(page)).notifications.includes(live),
        { message: `${transport}: the new notification delivered, not dropped as a duplicate` });
      const stored = await page.evaluate((u) => {
        const gw = new URLSearchParams(location.search).get('gw');
        return localStorage.getItem(`reddot:${new URL(gw).origin}:${u}:cursor`);
      }, user);
      assert.equal(stored, String(live));
      assert.deepEqual((await logOf(page)).resets, ['cursor_ahead'], transport);
    }
  });
});

test('auto goes back to SSE once it works again, and tries less often while it does not', async () => {
  await withApp(async (stack, page, context) => {
    const user = 'upgrade-back';
    // A proxy breaks SSE for a while: auto falls back to WebSocket.
    const sseTries = [];
    await context.route(/\/v1\/stream/, (route) => { sseTries.push(Date.now()); return route.abort('connectionreset'); });
    await page.evaluate(([token, u]) => window.make({ token, user: u, transport: 'auto', upgradeAfter: 1000 }),
      [await stack.token(user), user]);
    const state = () => page.evaluate(() => `${window.rd.status.state}/${window.rd.status.transport}`);
    await waitFor(async () => (await state()) === 'open/ws', { timeout: 15_000, message: 'open on ws' });
    const first = (await stack.notify(user, 'over ws')).id;
    await waitFor(async () => (await logOf(page)).notifications.includes(first), { message: 'delivered over ws' });

    // Still broken: SSE is tried again (each try falls back to ws), 1 s after going live
    // on ws, then 2 s after. Tries of one round are under a second apart.
    const rounds = () => sseTries.reduce((all, t, i) => {
      if (i === 0 || t - sseTries[i - 1] > 900) all.push([t]); else all.at(-1).push(t);
      return all;
    }, []);
    await waitFor(async () => rounds().length >= 3 && (await state()) === 'open/ws',
      { timeout: 20_000, message: 'two more tries of SSE, back on ws after each' });
    const [r0, r1, r2] = rounds();
    assert.ok(r1[0] - r0.at(-1) >= 1000, `first try after ${r1[0] - r0.at(-1)} ms`);
    assert.ok(r2[0] - r1.at(-1) >= 2000, `second try after ${r2[0] - r1.at(-1)} ms: the wait doubles`);

    // The proxy is fixed: the next try stays on SSE.
    await context.unroute(/\/v1\/stream/);
    await waitFor(async () => (await state()) === 'open/sse', { timeout: 20_000, message: 'back on SSE' });
    const later = (await stack.notify(user, 'over SSE again')).id;
    await waitFor(async () => (await logOf(page)).notifications.includes(later), { message: 'delivered over SSE' });
    const { notifications } = await logOf(page);
    assert.deepEqual(notifications, [first, later], 'each once, nothing missed');
  });
});

test('remove() on polling takes the notification off the badge at once, not at the next poll', async () => {
  await withApp(async (stack, page) => {
    const user = 'remove-on-poll';
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await stack.notify(user, `n${i}`)).id);
    // Polls far apart: only the client's own recount can move the badge in time.
    await page.evaluate(([token, u]) => window.make({ token, user: u, transport: 'poll', pollInterval: 60_000 }),
      [await stack.token(user), user]);
    await waitFor(async () => (await badgeOf(page)) === 3, { message: 'badge 3' });
    await page.evaluate((id) => window.rd.remove(id), ids[2]);
    await waitFor(async () => (await badgeOf(page)) === 2, { message: 'badge 2 after removing the newest' });
    await page.evaluate((id) => window.rd.remove(id), ids[0]);
    await waitFor(async () => (await badgeOf(page)) === 1, { message: 'badge 1 after removing the oldest' });
  });
});

/**
 * A TCP proxy to the gateway whose open connections can go silent: `stall()` closes
 * their gateway side and keeps the browser side open without a byte more (a half-open
 * connection, as after a NAT, a proxy or a sleeping laptop lost it). New connections
 * pass as before.
 */
function stallingProxy(port) {
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), '127.0.0.1');
    const pair = { client, upstream, live: true };
    client.on('data', (d) => { if (pair.live) upstream.write(d); });
    upstream.on('data', (d) => { if (pair.live) client.write(d); });
    const end = () => {
      if (!pair.live) return; // stalled: the browser's side stays open
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) { socket.on('error', end); socket.on('close', end); }
    pairs.add(pair);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}`,
    stall: () => { for (const p of pairs) { p.live = false; p.upstream.destroy(); } },
    close: () => {
      for (const p of pairs) { p.client.destroy(); p.upstream.destroy(); }
      server.close();
    },
  })));
}

test('an SSE stream that went silent (half-open) is noticed, and what came meanwhile arrives', async () => {
  await withApp(async (stack, page) => {
    const user = 'silent-sse';
    const proxy = await stallingProxy(new URL(stack.gatewayUrl).port);
    try {
      await page.evaluate(([token, u, gw]) => window.make({ token, user: u, transport: 'sse', gateway: gw,
        sseCheckInterval: 1000 }), [await stack.token(user), user, proxy.url]);
      await waitFor(async () => (await page.evaluate(() => window.rd.status.state)) === 'open', { message: 'open' });
      const first = (await stack.notify(user, 'before')).id;
      await waitFor(async () => (await logOf(page)).notifications.includes(first), { message: 'delivered' });

      proxy.stall();
      const during = (await stack.notify(user, 'while the stream is silent')).id;
      await waitFor(async () => (await logOf(page)).notifications.includes(during),
        { timeout: 25_000, message: 'the silent stream noticed, resumed, and the notification delivered' });
      const log = await logOf(page);
      assert.deepEqual(log.notifications, [first, during], 'each once, in order');
      assert.ok(log.statuses.some((st) => st.startsWith('reconnecting')), log.statuses.join(' '));
    } finally {
      proxy.close();
    }
  });
});


test('back online during a reconnect attempt replaces the attempt instead of adding a connection', async () => {
  await withApp(async (stack, page, context) => {
    const user = 'online-retry';
    // The first stream request fails; the next ones are slow: a retry is in flight.
    let streams = 0;
    await context.route(/\/v1\/stream/, async (route) => {
      streams++;
      if (streams === 1) return route.abort('connectionreset');
      await sleep(1500);
      return route.continue().catch(() => {}); // closed by the client meanwhile
    });
    await page.evaluate(() => {
      const Original = window.EventSource;
      window.openStreams = new Set();
      window.EventSource = function (url) {
        const es = new Original(url);
        const close = es.close.bind(es);
        es.close = () => { window.openStreams.delete(es); close(); };
        window.openStreams.add(es);
        return es;
      };
    });
    await page.evaluate(([token, u]) => window.make({ token, user: u, transport: 'sse', minBackoff: 300 }),
      [await stack.token(user), user]);
    await waitFor(async () => streams >= 2, { message: 'a retry in flight' });
    await page.evaluate(() => window.dispatchEvent(new Event('online')));
    await waitFor(async () => (await page.evaluate(() => window.rd.status.state)) === 'open',
      { timeout: 10_000, message: 'open' });
    const live = (await stack.notify(user, 'once')).id;
    await waitFor(async () => (await logOf(page)).notifications.includes(live), { message: 'delivered' });
    assert.equal(await page.evaluate(() => window.openStreams.size), 1, 'one stream open');
    await page.evaluate(() => window.rd.close());
    assert.equal(await page.evaluate(() => window.openStreams.size), 0, 'none after close()');
  });
});

test('polling leaves no abort listener behind per request', async () => {
  await withApp(async (stack, page) => {
    const user = 'poll-listeners';
    await page.evaluate(() => {
      // Abort listeners added minus removed, on every signal the client hands requests.
      window.abortListeners = 0;
      const { addEventListener: add, removeEventListener: remove } = EventTarget.prototype;
      AbortSignal.prototype.addEventListener = function (type, fn, opts) {
        if (type === 'abort') window.abortListeners++;
        return add.call(this, type, fn, opts);
      };
      AbortSignal.prototype.removeEventListener = function (type, fn, opts) {
        if (type === 'abort') window.abortListeners--;
        return remove.call(this, type, fn, opts);
      };
    });
    await page.evaluate(([token, u]) => window.make({ token, user: u, transport: 'poll', pollInterval: 100 }),
      [await stack.token(user), user]);
    await waitFor(async () => (await page.evaluate(() => window.rd.status.state)) === 'open', { message: 'open' });
    await sleep(3000); // ~30 polls
    const left = await page.evaluate(() => window.abortListeners);
    assert.ok(left <= 2, `${left} abort listeners left after ~30 polls`);
  });
});
