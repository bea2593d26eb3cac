// Every transport, in the real demo page: a posted notification reaches the badge and
// the open inbox within 1 s; reading it there and on "another device" clears the badge.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launchBrowser, withStack, openDemo, waitState, waitBadge, badgeText, received, sleep,
} from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

for (const transport of ['sse', 'ws', 'longpoll', 'poll', 'iframe']) {
  test(`${transport}: a posted notification shows in the badge and the inbox within 1 s`, async () => {
    await withStack({}, async (stack) => {
      const user = `user-${transport}`;
      const context = await browser.newContext();
      try {
        // Something already in the inbox before the page opens.
        const old = await stack.notify(user, 'Older news');
        const page = await openDemo(context, stack, await stack.token(user), { transport, poll_ms: '300' });
        await waitState(page);
        assert.equal((await page.evaluate(() => window.demo.rd.status)).transport, transport);
        await waitBadge(page, '1');
        await page.click('#bell');
        await page.waitForSelector(`#list .item[data-id="${old.id}"]`);

        // What the page's own listeners get: the contract's notification, and the exact
        // badge as the unread event's count.
        await page.evaluate(() => {
          window.seen = { keys: [], counts: [] };
          window.demo.rd.on('notification', (n) => window.seen.keys.push(Object.keys(n).sort().join(',')));
          window.demo.rd.on('unread', (u) => window.seen.counts.push(u.count));
        });
        const started = Date.now();
        const created = await stack.notify(user, `Hello over ${transport}`);
        await page.waitForFunction((id) => {
          const b = document.getElementById('badge');
          const item = document.querySelector(`#list .item.unread[data-id="${id}"]`);
          return !b.hidden && b.textContent === '2' && item && item.textContent.includes('Hello over');
        }, created.id, { timeout: 3000, polling: 10 });
        const elapsed = Date.now() - started;
        assert.ok(elapsed < 1000, `${transport}: shown after ${elapsed} ms`);
        assert.deepEqual(await received(page), [created.id]);
        assert.match(await page.textContent('#announcer'), /Hello over/);
        const seen = await page.evaluate(() => window.seen);
        assert.deepEqual(seen.keys, [
          'audience,body,created_at,data,expires_at,id,kind,sender,title',
        ]);
        assert.equal(seen.counts.at(-1), 2, `unread counts seen: ${seen.counts}`);

        // Mark read in the inbox: the item loses its bold, the badge goes down.
        await page.click(`#list .item[data-id="${created.id}"] .mark`);
        await waitBadge(page, '1');
        assert.equal(await page.locator(`#list .item.unread[data-id="${created.id}"]`).count(), 0);

        // Read on another device (straight to the gateway): pushed to the page (a held
        // long poll is answered with the new count).
        const res = await fetch(`${stack.gatewayUrl}/v1/notifications/read`, {
          method: 'POST',
          headers: { authorization: `Bearer ${await stack.token(user)}`, 'content-type': 'application/json' },
          body: JSON.stringify({ all: true }),
        });
        assert.equal(res.status, 200);
        await waitBadge(page, '', 2000);
        assert.deepEqual(page.errors, []);
      } finally {
        await context.close();
      }
    });
  });
}

test('auto starts with SSE', async () => {
  await withStack({}, async (stack) => {
    const context = await browser.newContext();
    try {
      const page = await openDemo(context, stack, await stack.token('auto-user'));
      await waitState(page);
      assert.equal(await page.evaluate(() => window.demo.rd.status.transport), 'sse');
      assert.equal(await badgeText(page), '');
      await stack.notify('auto-user', 'Auto');
      await waitBadge(page, '1', 2000);
      // The switcher reconnects over the chosen transport, and nothing is lost meanwhile.
      await page.selectOption('#transport', 'ws');
      await page.waitForFunction(() => window.demo.rd.status.transport === 'ws' && window.demo.rd.status.state === 'open');
      await stack.notify('auto-user', 'After switching');
      await waitBadge(page, '2', 2000);
      assert.equal(new Set(await received(page)).size, 2);
    } finally {
      await context.close();
    }
  });
});

// Short polling: a GET /v1/unread sent before a read and answered after it carries the
// count from before the read. It must not put the read one back on the badge.
test('poll: an unread count answered after a read does not undo it', async () => {
  await withStack({}, async (stack) => {
    const user = 'stale-poll';
    const context = await browser.newContext();
    try {
      await stack.notify(user, 'Read me');
      const page = await openDemo(context, stack, await stack.token(user), { transport: 'poll', poll_ms: '300' });
      await waitState(page);
      await waitBadge(page, '1');
      await page.evaluate(() => {
        window.counts = [];
        window.demo.rd.on('unread', (u) => window.counts.push(u.count));
      });
      // A second notification comes; the next poll's answer (count 2) is held ...
      let release;
      const released = new Promise((r) => { release = r; });
      let held;
      const heldAnswer = new Promise((r) => { held = r; });
      let second;
      await page.route(/\/v1\/unread/, async (route) => {
        second = await stack.notify(user, 'Second');
        const answer = await route.fetch();
        held();
        await released;
        await route.fulfill({ response: answer });
      }, { times: 1 });
      await heldAnswer;
      // ... mark all read meanwhile (the badge clears) ...
      await page.evaluate(() => window.demo.rd.markAllRead());
      await waitBadge(page, '', 1000);
      await page.evaluate(() => { window.counts = []; });
      // ... then let the old answer through: the badge stays clear.
      release();
      await sleep(1000);
      const counts = await page.evaluate(() => window.counts);
      assert.deepEqual(counts.filter((c) => c !== 0), [], `unread counts after the read: ${counts}`);
      assert.equal(await badgeText(page), '');
      // The second one is still delivered (read already, by the mark-all).
      assert.deepEqual(await received(page), [second.id]);
      assert.deepEqual(page.errors, []);
    } finally {
      await context.close();
    }
  });
});
