// transport "auto": SSE, falling back to WebSocket, then long polling, when a transport
// fails while the gateway itself answers (a proxy that breaks streaming, say).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, withStack, openDemo, waitState, waitBadge } from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

test('auto falls back from SSE to WebSocket, then to long polling', async () => {
  await withStack({}, async (stack) => {
    const context = await browser.newContext();
    try {
      // Something between browser and gateway breaks SSE.
      await context.route(/\/v1\/stream/, (route) => route.abort('connectionreset'));
      const page = await openDemo(context, stack, await stack.token('fallback-ws'));
      await waitState(page, 'open', 15_000);
      assert.equal(await page.evaluate(() => window.demo.rd.status.transport), 'ws');
      await stack.notify('fallback-ws', 'over ws');
      await waitBadge(page, '1');
      await page.close();

      // ... and WebSocket too.
      await context.routeWebSocket(/\/v1\/ws/, (ws) => ws.close({ code: 1011, reason: 'nope' }));
      const page2 = await openDemo(context, stack, await stack.token('fallback-lp'));
      await waitState(page2, 'open', 20_000);
      assert.equal(await page2.evaluate(() => window.demo.rd.status.transport), 'longpoll');
      await stack.notify('fallback-lp', 'over long polling');
      await waitBadge(page2, '1');
    } finally {
      await context.close();
    }
  });
});

test('a gateway that is down is not a broken transport: auto stays on SSE', async () => {
  await withStack({}, async (stack) => {
    const context = await browser.newContext();
    try {
      const page = await openDemo(context, stack, await stack.token('patient'));
      await waitState(page);
      await stack.killGateway();
      await page.waitForFunction(() => window.demo.rd.status.attempt >= 3, null, { timeout: 15_000 });
      await stack.startGateway();
      await waitState(page, 'open', 15_000);
      assert.equal(await page.evaluate(() => window.demo.rd.status.transport), 'sse');
    } finally {
      await context.close();
    }
  });
});
