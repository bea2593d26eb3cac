// reddot.js over MQTT: Chromium talks MQTT 3.1.1 over WebSocket to RabbitMQ's Web-MQTT
// plugin (ws://127.0.0.1:15675/ws), which asks the gateway whether the user may log in
// and subscribe. Needs RabbitMQ as scripts/services configures it. The gateway runs on
// the auth backend's fixed port and MQTT logins are routed to this stack's vhost
// broker-wide, so no other MQTT test may run meanwhile: scripts/test runs the browser
// files one at a time, after the Rust tests.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launchBrowser, withStack, staticSite, watchErrors, waitFor, routeMqttTo, MQTT_AUTH_PORT,
} from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

// Another site embedding the client (the demo page's CSP allows connections to its own
// origin only, and the broker is another one).
const PAGE = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>mqtt</title></head><body>
<script type="module">
  const gateway = new URLSearchParams(location.search).get('gw');
  await import(gateway + '/reddot.js');
  const { Reddot } = globalThis;
  window.start = (token) => {
    const log = { notifications: [], statuses: [] };
    const rd = new Reddot({ gateway, token, share: false, transport: 'mqtt',
      mqtt: { url: 'ws://127.0.0.1:15675/ws' } });
    rd.on('notification', (n) => log.notifications.push(n));
    rd.on('status', (s) => log.statuses.push(s.state + ':' + s.transport));
    window.client = { rd, log };
  };
  window.ready = true;
</script></body></html>`;

const logOf = (page) => page.evaluate(() => window.client.log);
const stateOf = (page) => page.evaluate(() => window.client.rd.status);

test('mqtt: notifications arrive over Web-MQTT, and what was sent while away is caught up once', async () => {
  const site = await staticSite({ '/mqtt.html': PAGE });
  try {
    await withStack({ extraOrigins: [site.origin], gatewayPort: MQTT_AUTH_PORT }, async (stack) => {
      const unroute = await routeMqttTo(stack.vhost);
      const context = await browser.newContext();
      try {
        const user = 'mqtt.user:1';
        const page = watchErrors(await context.newPage());
        await page.goto(`${site.origin}/mqtt.html?gw=${encodeURIComponent(stack.gatewayUrl)}`);
        await page.waitForFunction(() => window.ready === true);

        await page.evaluate((token) => window.start(token), await stack.token(user));
        await waitFor(async () => (await stateOf(page)).state === 'open', { message: 'mqtt open', timeout: 10_000 });
        assert.equal((await stateOf(page)).transport, 'mqtt');

        // Live: only MQTT carries notifications on this transport (the gateway is asked
        // for counts every 15 s), so arriving within 2 s means MQTT delivered them.
        const live = await stack.notify(user, 'live over mqtt');
        const broadcast = await stack.post({ to: { all: true }, title: 'to everyone' });
        await waitFor(async () => (await logOf(page)).notifications.length >= 2,
          { message: 'live notification and broadcast', timeout: 2000 });
        let log = await logOf(page);
        assert.deepEqual(log.notifications.map((n) => n.id), [live.id, broadcast.id]);
        assert.equal(log.notifications[0].title, 'live over mqtt');
        assert.equal(log.notifications[1].audience, 'all');

        // Away: the page's client closes, one is sent, a new client resumes from the
        // stored cursor: the gateway catches it up, MQTT carries the next, none twice.
        await page.evaluate(() => window.client.rd.close());
        const missed = await stack.notify(user, 'sent while away');
        await page.evaluate((token) => window.start(token), await stack.token(user));
        await waitFor(async () => (await stateOf(page)).state === 'open', { message: 'mqtt open again', timeout: 10_000 });
        const after = await stack.notify(user, 'after the catch-up');
        await waitFor(async () => (await logOf(page)).notifications.some((n) => n.id === after.id),
          { message: 'the notification after the catch-up', timeout: 2000 });
        log = await logOf(page);
        assert.deepEqual(log.notifications.map((n) => n.id), [missed.id, after.id]);
        assert.deepEqual(page.errors, []);
      } finally {
        await context.close();
        await unroute();
      }
    });
  } finally {
    await site.close();
  }
});
