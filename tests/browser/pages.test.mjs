// The two pages as a person uses them: the producer's admin page (mint a token, open the
// demo through its link, send a notification, see errors), and the demo's inbox by
// keyboard, "99+", load more, mark all read, and the page without a token.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  API_KEY, launchBrowser, withStack, openDemo, watchErrors, waitState, waitBadge, badgeText,
} from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

test('admin page: mint a token, open the demo from its link, send, see errors', async () => {
  await withStack({}, async (stack) => {
    const context = await browser.newContext();
    try {
      const admin = watchErrors(await context.newPage());
      await admin.goto(`${stack.producerUrl}/admin`);
      await admin.fill('#api-key', API_KEY);
      await admin.check('#remember');
      await admin.fill('#gateway', stack.gatewayUrl);

      await admin.fill('#mint-user', 'frank');
      await admin.click('#mint');
      await admin.waitForSelector('#token-out:not([hidden])');
      assert.match(await admin.textContent('#mint-result .head'), /^200/);
      const href = await admin.getAttribute('#demo-link', 'href');
      assert.ok(href.startsWith(`${stack.gatewayUrl}/#token=ey`), href);
      assert.ok(!href.includes('?'), 'the token is in the fragment, never the query string');

      const demo = watchErrors(await context.newPage());
      await demo.goto(href);
      await waitState(demo);
      assert.equal(await demo.getAttribute('#admin-link', 'href'), `${stack.producerUrl}/admin`);
      await admin.bringToFront(); // (a background tab gets no animation frames to click with)

      await admin.fill('#users', 'frank, grace');
      await admin.fill('#kind', 'comment');
      await admin.fill('#title', 'Sent from the admin page');
      await admin.fill('#body', 'with a body');
      await admin.fill('#data', '{"post_id": 42}');
      await admin.click('#send');
      await waitBadge(demo, '1', 2000);
      await admin.waitForFunction(() => /^201/.test(document.querySelector('#send-result .head').textContent));
      const created = JSON.parse(await admin.textContent('#send-result pre'));
      assert.equal(created.recipients, 2);
      const listed = await demo.evaluate(() => window.demo.rd.list());
      assert.deepEqual(listed.items[0].data, { post_id: 42 });

      // Bad data JSON: refused in the page, the field marked.
      await admin.fill('#data', '[1, 2');
      await admin.click('#send');
      assert.match(await admin.textContent('#send-result .head'), /Invalid data/);
      assert.equal(await admin.getAttribute('#data', 'aria-invalid'), 'true');
      // The producer's error JSON is shown as is.
      await admin.fill('#data', '{}');
      await admin.fill('#kind', 'Not A Kind!');
      await admin.click('#send');
      await admin.waitForFunction(() => /^400/.test(document.querySelector('#send-result .head').textContent));
      assert.equal(JSON.parse(await admin.textContent('#send-result pre')).error.field, 'kind');
      await admin.fill('#kind', 'comment');
      await admin.fill('#api-key', 'wrong-key');
      await admin.click('#send');
      await admin.waitForFunction(() => /^401/.test(document.querySelector('#send-result .head').textContent));
      assert.ok(JSON.parse(await admin.textContent('#send-result pre')).error);

      // Broadcast to everyone.
      await admin.fill('#api-key', API_KEY);
      await admin.check('input[name=audience][value=all]');
      await admin.fill('#title', 'To everyone');
      await admin.click('#send');
      await admin.waitForFunction(() => /^201/.test(document.querySelector('#send-result .head').textContent));
      assert.equal(JSON.parse(await admin.textContent('#send-result pre')).recipients, null);
      await waitBadge(demo, '2', 2000);

      // The key lives in sessionStorage only while "keep" is ticked, never in localStorage.
      const stored = await admin.evaluate(() => [sessionStorage.getItem('reddot-admin:api-key'), JSON.stringify(localStorage)]);
      assert.equal(stored[0], API_KEY);
      assert.ok(!stored[1].includes(API_KEY));
      await admin.uncheck('#remember');
      assert.equal(await admin.evaluate(() => sessionStorage.getItem('reddot-admin:api-key')), null);
      assert.deepEqual(admin.errors, []);
      assert.deepEqual(demo.errors, []);
    } finally {
      await context.close();
    }
  });
});

test('demo inbox: keyboard, aria-live, 99+, load more, mark all read', async () => {
  await withStack({}, async (stack) => {
    const context = await browser.newContext();
    try {
      const user = 'kim';
      const users = { users: [user] };
      for (let i = 1; i <= 105; i++) await stack.post({ to: users, title: `Backlog ${i}` });
      const page = await openDemo(context, stack, await stack.token(user));
      await waitState(page);
      await waitBadge(page, '99+');
      assert.equal(await page.getAttribute('#bell', 'aria-expanded'), 'false');
      assert.match(await page.textContent('#bell-label'), /105 unread/);
      assert.match(await page.title(), /^\(99\+\)/);

      // Keyboard: focus the bell, Enter opens the inbox and moves focus into it.
      await page.focus('#bell');
      await page.keyboard.press('Enter');
      await page.waitForSelector('#inbox:not([hidden])');
      assert.equal(await page.getAttribute('#bell', 'aria-expanded'), 'true');
      assert.equal(await page.evaluate(() => document.activeElement.closest('#inbox') !== null), true);
      assert.equal(await page.locator('#list .item').count(), 20);
      // Arrow down moves between the inbox's buttons; Enter marks one read.
      await page.keyboard.press('ArrowDown');
      const focused = await page.evaluate(() => document.activeElement.closest('.item').dataset.id);
      await page.keyboard.press('Enter');
      await page.waitForFunction((id) => !document.querySelector(`#list .item[data-id="${id}"]`).classList.contains('unread'), focused);
      await page.waitForFunction(() => /104 unread/.test(document.getElementById('bell-label').textContent));
      // Load more: the next page, older items.
      await page.click('#more');
      await page.waitForFunction(() => document.querySelectorAll('#list .item').length === 40);
      // A live one: on top, announced.
      await stack.notify(user, 'Fresh one', { sender: 'lee' });
      await page.waitForFunction(() => document.querySelector('#list .item .item-title').textContent === 'Fresh one');
      assert.equal(await page.textContent('#announcer'), 'New notification from lee: Fresh one');
      assert.equal(await page.getAttribute('#announcer', 'aria-live'), 'polite');
      // Escape closes and gives focus back to the bell.
      await page.keyboard.press('Escape');
      assert.equal(await page.isHidden('#inbox'), true);
      assert.equal(await page.evaluate(() => document.activeElement.id), 'bell');
      // Mark all read.
      await page.keyboard.press('Enter');
      await page.click('#mark-all');
      await waitBadge(page, '');
      assert.equal(await page.locator('#list .item.unread').count(), 0);
      assert.match(await page.textContent('#bell-label'), /none unread/);
      assert.deepEqual(page.errors, []);
    } finally {
      await context.close();
    }
  });
});

test('demo without a token explains how to get one', async () => {
  await withStack({}, async (stack) => {
    const context = await browser.newContext();
    try {
      const page = watchErrors(await context.newPage());
      await page.goto(`${stack.gatewayUrl}/`);
      await page.waitForSelector('#no-token:not([hidden])');
      assert.equal(await page.isDisabled('#bell'), true);
      assert.equal(await badgeText(page), '');
      // Pasting a token opens the demo for that user.
      await page.fill('#token-input', await stack.token('pat'));
      await page.click('#token-form button');
      await page.waitForFunction(() => window.demo && window.demo.rd.status.state === 'open');
      assert.equal(await page.textContent('#user'), 'pat');
      assert.ok(!page.url().includes('?'), page.url());
      assert.deepEqual(page.errors, []);
    } finally {
      await context.close();
    }
  });
});
