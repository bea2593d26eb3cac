// Takes the demo's screenshots for the docs: docs/screenshots/badge.png (the bell with a
// count) and docs/screenshots/inbox.png (the open inbox). Run: npm run screenshots
// (builds the services unless REDDOT_SKIP_BUILD=1; OUT=dir writes elsewhere).

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, launchBrowser, startStack, openDemo, waitState, waitBadge, sleep } from './harness.mjs';

export async function takeScreenshots(outDir = join(REPO, 'docs', 'screenshots')) {
  mkdirSync(outDir, { recursive: true });
  const stack = await startStack();
  const browser = await launchBrowser();
  try {
    const user = 'alice';
    const to = { users: [user] };
    await stack.post({ to: { all: true }, kind: 'system', sender: 'ops', title: 'Scheduled maintenance on Sunday',
      body: 'The service is read-only from 02:00 to 03:00 UTC while we upgrade the database.' });
    const follow = await stack.post({ to, kind: 'follow', sender: 'dave', title: 'Dave started following you' });
    await stack.post({ to, kind: 'like', sender: 'erin', title: 'Erin liked your photo', body: '“Sunset over the bay”' });
    await stack.post({ to, kind: 'mention', sender: 'carol', title: 'Carol mentioned you in #launch',
      body: '@alice can you review the rollout plan before Friday?' });
    const token = await stack.token(user);
    await fetch(`${stack.gatewayUrl}/v1/notifications/read`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ids: [follow.id] }),
    });

    const context = await browser.newContext({ viewport: { width: 1100, height: 820 }, colorScheme: 'light' });
    const page = await openDemo(context, stack, token);
    await waitState(page);
    await waitBadge(page, '3');
    await stack.post({ to, kind: 'comment', sender: 'bob', title: 'New reply from Bob',
      body: 'Bob replied to your post “Launch checklist”: Looks great, ship it!' });
    await waitBadge(page, '4');
    await sleep(1500); // let the bell's ring finish
    await page.screenshot({ path: join(outDir, 'badge.png') });
    await page.click('#bell');
    await page.waitForSelector('#inbox:not([hidden]) #list .item');
    await page.locator('#bell').blur();
    await page.mouse.move(0, 300);
    await sleep(1500); // the new item's highlight fades
    await page.screenshot({ path: join(outDir, 'inbox.png') });
    if (page.errors.length) throw new Error(page.errors.join('\n'));
    return [join(outDir, 'badge.png'), join(outDir, 'inbox.png')];
  } finally {
    await browser.close();
    await stack.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const files = await takeScreenshots(process.env.OUT || undefined);
  console.log(files.join('\n'));
}
