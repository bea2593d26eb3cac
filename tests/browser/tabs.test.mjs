// Ten tabs of one user in one browser: one connection (Web Locks leader + BroadcastChannel
// relay), every tab gets every event, reads spread to every tab, and the tabs stay live
// when the leader's tab closes.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launchBrowser, withStack, openDemo, waitState, waitBadge, received, sleep,
} from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
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

test('ten tabs share one connection and all see every event', async (t) => {
  await withStack({}, async (stack) => {
    const user = 'tabby';
    const context = await browser.newContext();
    try {
      const token = await stack.token(user);
      const pages = [];
      for (let i = 0; i < TABS; i++) pages.push(await openDemo(context, stack, token));
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
        assert.ok(Date.now() - t0 < 3000, 'a new leader is connected within 3 s');
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
});
