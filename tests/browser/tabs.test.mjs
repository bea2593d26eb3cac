// Ten tabs of one user in one browser: one connection (Web Locks leader + BroadcastChannel
// relay), every tab gets every event, reads spread to every tab, and the tabs stay live
// when the leader's tab closes. Again on a plain-http host other than localhost, which is
// not a secure context: no Web Locks there, the client elects its leader with a lease.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launchBrowser, withStack, openDemo, watchErrors, waitState, waitBadge, received, sleep, waitFor,
} from './harness.mjs';

// reddot.test is 127.0.0.1 to this browser, but, unlike 127.0.0.1 and localhost, not
// "potentially trustworthy": pages served from it over http are not a secure context.
const INSECURE_HOST = 'reddot.test';

let browser;
before(async () => { browser = await launchBrowser([`--host-resolver-rules=MAP ${INSECURE_HOST} 127.0.0.1`]); });
after(async () => { await browser?.close(); });

const TABS = 10;

/** The gateway's open sessions, from /metrics (every transport). */
async function sessions(stack) {
  const text = await (await fetch(`${stack.gatewayUrl}/metrics`)).text();
  return text.split('\n')
    .filter((l) => l.startsWith('reddot_sessions{'))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

async function leaders(pages) {
  const flags = await Promise.all(pages.map((p) => p.evaluate(() => window.demo.rd.isLeader)));
  return pages.filter((_, i) => flags[i]);
}

/** The demo page of `stack`, served from `host` instead of 127.0.0.1. */
async function openDemoAt(context, stack, token, host) {
  if (host === '127.0.0.1') return openDemo(context, stack, token);
  const gateway = stack.gatewayUrl.replace('127.0.0.1', host);
  const page = watchErrors(await context.newPage());
  await page.goto(stack.demoUrl(token).replace(stack.gatewayUrl, gateway));
  return page;
}

for (const host of ['127.0.0.1', INSECURE_HOST]) {
  test(`ten tabs share one connection and all see every event (${host})`, async (t) => {
    await tenTabs(t, host);
  });
}

async function tenTabs(t, host) {
  await withStack({}, async (stack) => {
    const user = 'tabby';
    const context = await browser.newContext();
    try {
      const token = await stack.token(user);
      const pages = [];
      for (let i = 0; i < TABS; i++) pages.push(await openDemoAt(context, stack, token, host));
      const secure = await pages[0].evaluate(() => [window.isSecureContext, !!navigator.locks]);
      assert.deepEqual(secure, host === INSECURE_HOST ? [false, false] : [true, true]);
      await Promise.all(pages.map((p) => waitState(p)));

      let leading = await leaders(pages);
      assert.equal(leading.length, 1, 'exactly one leader tab');
      assert.equal(await sessions(stack), 1, 'one connection to the gateway for ten tabs');

      // A post reaches every tab.
      const first = await stack.notify(user, 'To every tab');
      await Promise.all(pages.map((p) => waitBadge(p, '1', 3000)));
      for (const p of pages) assert.deepEqual(await received(p), [first.id]);

      // Marking it read in one (non-leader) tab clears the badge in all.
      const reader = pages.find((p) => p !== leading[0]);
      await reader.bringToFront(); // (background tabs get no animation frames to click with)
      await reader.click('#bell');
      await reader.click(`#list .item[data-id="${first.id}"] .mark`);
      await Promise.all(pages.map((p) => waitBadge(p, '', 3000)));
      // ... and the item is shown read in the other tabs' inboxes too.
      const other = pages.find((p) => p !== reader && p !== leading[0]);
      await other.waitForFunction((id) => {
        const li = document.querySelector(`#list .item[data-id="${id}"]`);
        return li && !li.classList.contains('unread');
      }, first.id, { timeout: 3000 });

      // Close the leader's tab: another takes over within a couple of seconds.
      const oldLeader = leading[0];
      await oldLeader.close();
      const rest = pages.filter((p) => p !== oldLeader);
      const t0 = Date.now();
      for (;;) {
        leading = await leaders(rest);
        if (leading.length === 1 && (await leading[0].evaluate(() => window.demo.rd.status.state)) === 'open') break;
        if (Date.now() - t0 >= 3000) {
          // What each tab thinks, and the lease (insecure host), to tell why.
          const seen = await Promise.all(rest.map((p) => p.evaluate(() => [
            window.demo.rd.isLeader, window.demo.rd.status.state,
            Object.entries(localStorage).filter(([k]) => k.endsWith(':lease')).map(([, v]) => v).join(),
          ])));
          assert.fail(`no new leader connected within 3 s: ${JSON.stringify(seen)}`);
        }
        await sleep(50);
      }
      t.diagnostic(`new leader connected ${Date.now() - t0} ms after the old one's tab closed`);
      const second = await stack.notify(user, 'After the leader left');
      await Promise.all(rest.map((p) => waitBadge(p, '1', 3000)));
      for (const p of rest) assert.deepEqual(await received(p), [first.id, second.id]);
      // The new leader's connection is the only new one. (The closed tab's SSE session
      // is only noticed by the gateway at its next write, the heartbeat, ≤ 15 s later.)
      assert.ok(await sessions(stack) <= 2, 'one new connection for the nine tabs');

      // Mark all read from another tab: every badge clears.
      await rest[3].bringToFront();
      await rest[3].click('#bell');
      await rest[3].click('#mark-all');
      await Promise.all(rest.map((p) => waitBadge(p, '', 3000)));
      for (const p of rest) assert.deepEqual(p.errors, []);
    } finally {
      await context.close();
    }
  });
}

// A leader's `lease_free` message can reach the other tabs before its removal of the lease
// does (localStorage reaches other processes later): the freed lease must count as free.
// A "ghost" tab's lease, valid for a minute, stands in for a removal that has not arrived.
test('a freed lease is taken over at once though it still reads as held (reddot.test)', async () => {
  await withStack({}, async (stack) => {
    const context = await browser.newContext();
    try {
      const token = await stack.token('ghosted');
      const pages = [];
      for (let i = 0; i < 2; i++) pages.push(await openDemoAt(context, stack, token, INSECURE_HOST));
      await Promise.all(pages.map((p) => waitState(p)));
      const ns = await pages[0].evaluate(() => window.demo.rd._ns);
      // The ghost takes the lease; the leader finds it at its next renewal and steps down.
      await pages[0].evaluate((key) => {
        localStorage.setItem(key, JSON.stringify({ id: 'ghost', until: Date.now() + 60_000 }));
      }, `${ns}:lease`);
      await waitFor(async () => (await leaders(pages)).length === 0, { timeout: 3000, message: 'both tabs follow the ghost' });

      // The ghost's page goes away: its message comes, its lease still reads as held.
      await pages[1].evaluate((name) => {
        const bc = new BroadcastChannel(name);
        bc.postMessage({ t: 'lease_free', from: 'ghost' });
        bc.close();
      }, ns);
      await waitFor(async () => {
        const leading = await leaders(pages);
        return leading.length === 1 && (await leading[0].evaluate(() => window.demo.rd.status.state)) === 'open';
      }, { timeout: 3000, message: 'a tab leads and is connected' });
      const second = await stack.notify('ghosted', 'After the ghost left');
      await Promise.all(pages.map((p) => waitBadge(p, '1', 3000)));
      for (const p of pages) assert.deepEqual(await received(p), [second.id]);
    } finally {
      await context.close();
    }
  });
});
