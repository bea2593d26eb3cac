// Resume: what was sent while no tab was open arrives when one opens (from the cursor kept
// in localStorage), and a tab rides out a gateway restart; nothing twice.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launchBrowser, withStack, openDemo, waitState, waitBadge, received, sleep,
} from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

test('offline: close every tab, post 3, open one: the 3 arrive, none twice', async () => {
  await withStack({}, async (stack) => {
    const user = 'olivia';
    const context = await browser.newContext();
    try {
      const token = await stack.token(user);
      const tabs = [await openDemo(context, stack, token), await openDemo(context, stack, token)];
      await Promise.all(tabs.map((p) => waitState(p)));
      const seen = await stack.notify(user, 'Seen while online');
      await Promise.all(tabs.map((p) => waitBadge(p, '1')));
      for (const p of tabs) await p.close();

      const missed = [];
      for (let i = 1; i <= 3; i++) missed.push((await stack.notify(user, `Missed ${i}`)).id);

      const page = await openDemo(context, stack, token);
      await waitState(page);
      await waitBadge(page, '4', 3000);
      // Replayed from the stored cursor, in order, once each; the one seen before is not.
      await sleep(300);
      assert.deepEqual(await received(page), missed);
      await page.click('#bell');
      const ids = await page.$$eval('#list .item', (lis) => lis.map((li) => Number(li.dataset.id)));
      assert.deepEqual(ids, [...missed].reverse().concat(seen.id), 'each once in the inbox, newest first');
      assert.equal(await page.evaluate(() => window.demo.rd.lastEventId), missed[2]);
      assert.deepEqual(page.errors, []);
    } finally {
      await context.close();
    }
  });
});

for (const transport of ['sse', 'ws', 'longpoll', 'poll', 'iframe']) {
  test(`${transport}: a gateway restart on the same port: the tab reconnects and catches up`, async () => {
    await withStack({}, async (stack) => {
      const user = `rex-${transport}`;
      const context = await browser.newContext();
      try {
        const page = await openDemo(context, stack, await stack.token(user), { transport, poll_ms: '300' });
        await waitState(page);
        const before = await stack.notify(user, 'Before the restart');
        await waitBadge(page, '1');

        await stack.killGateway();
        // (The iframe transport cannot see a cut stream; its watchdog finds it later.)
        if (transport !== 'iframe') {
          await page.waitForFunction(() => window.demo.rd.status.state !== 'open', null, { timeout: 5000 });
        }
        const during = [];
        for (let i = 1; i <= 2; i++) during.push((await stack.notify(user, `While down ${i}`)).id);
        await sleep(500);
        await stack.startGateway();

        await waitBadge(page, '3', 15_000);
        await waitState(page, 'open');
        const after = await stack.notify(user, 'After the restart');
        await waitBadge(page, '4', 3000);
        await sleep(200);
        assert.deepEqual(await received(page), [before.id, ...during, after.id], 'each once, in order');
        await page.click('#bell');
        assert.equal(await page.locator('#list .item.unread').count(), 4);
      } finally {
        await context.close();
      }
    });
  });
}

test('more missed than the replay cap: reset, the inbox reloads, live delivery goes on', async () => {
  await withStack({ env: { REDDOT_REPLAY_CAP: '3' } }, async (stack) => {
    const user = 'resetty';
    const context = await browser.newContext();
    try {
      const token = await stack.token(user);
      let page = await openDemo(context, stack, token);
      await waitState(page);
      await stack.notify(user, 'Seen');
      await waitBadge(page, '1');
      await page.close();

      for (let i = 1; i <= 5; i++) await stack.notify(user, `Missed ${i}`);
      page = await openDemo(context, stack, token);
      await waitState(page);
      await waitBadge(page, '6', 3000);
      await page.waitForFunction(() => document.getElementById('log').textContent.includes('reset'));
      assert.deepEqual(await received(page), [], 'nothing replayed past the cap');
      await page.click('#bell');
      await page.waitForFunction(() => document.querySelectorAll('#list .item').length === 6);
      // The cursor moved to the gateway's latest id: a live one arrives as usual...
      const live = await stack.notify(user, 'Live after reset');
      await waitBadge(page, '7', 3000);
      assert.deepEqual(await received(page), [live.id]);
      // ... and a reconnect resumes from there, without another reset.
      await page.selectOption('#transport', 'ws');
      await page.waitForFunction(() => window.demo.rd.status.transport === 'ws' && window.demo.rd.status.state === 'open');
      await sleep(300);
      const resets = await page.evaluate(() => document.getElementById('log').textContent.split('reset —').length - 1);
      assert.equal(resets, 1);
    } finally {
      await context.close();
    }
  });
});
