// Test harness for the browser suite: a real producer and gateway per test (fresh
// RabbitMQ vhost, temp SQLite file), Debian's headless Chromium driven by
// playwright-core (never a downloaded browser), and a tiny static server that plays
// "another site" embedding reddot.js cross-origin.
//
// Environment knobs:
//   REDDOT_SKIP_BUILD=1   do not run `cargo build --workspace --bins` first
//   REDDOT_SHOW_LOGS=1    print the services' logs when a stack stops
//   CHROMIUM=/path        another Chromium binary (default /usr/bin/chromium)

import { spawn, spawnSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import {
  mkdtempSync, rmSync, createWriteStream, readFileSync, readdirSync, existsSync, writeFileSync,
} from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MANAGEMENT = 'http://127.0.0.1:15672/api';
const MANAGEMENT_AUTH = 'Basic ' + Buffer.from('guest:guest').toString('base64');
export const API_KEY = 'browser-test-key';

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

let built = false;
/**
 * Builds the service binaries (web/ is compiled into them), so a test never runs stale
 * pages: once per `node --test` run (its test files share the runner as parent process).
 */
export function ensureBuilt() {
  if (built || process.env.REDDOT_SKIP_BUILD) return;
  const marker = join(tmpdir(), `reddot-browser-built-${process.ppid}`);
  if (!existsSync(marker)) {
    const r = spawnSync('cargo', ['build', '--quiet', '--workspace', '--bins'], {
      cwd: REPO, stdio: ['ignore', 'inherit', 'inherit'],
    });
    if (r.status !== 0) throw new Error(`cargo build --workspace --bins failed (${r.status ?? r.error})`);
    try { writeFileSync(marker, ''); } catch { /* build again next time */ }
    // Markers of runs that are over.
    for (const f of readdirSync(tmpdir())) {
      const pid = Number(f.match(/^reddot-browser-built-(\d+)$/)?.[1]);
      if (!pid || pid === process.ppid) continue;
      try { process.kill(pid, 0); } catch { rmSync(join(tmpdir(), f), { force: true }); }
    }
  }
  built = true;
}

export async function launchBrowser(extraArgs = []) {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(executablePath)) {
    throw new Error(`${executablePath} is missing: apt-get install -y chromium`);
  }
  return chromium.launch({ executablePath, args: [...CHROMIUM_ARGS, ...extraArgs], headless: true });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A port that was free a moment ago (for services whose origin must be known up front). */
export function freePort() {
  return new Promise((resolveP, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolveP(port));
    });
  });
}

async function management(method, path, body) {
  const res = await fetch(MANAGEMENT + path, {
    method,
    headers: { authorization: MANAGEMENT_AUTH, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok && !(method === 'DELETE' && res.status === 404)) {
    throw new Error(`RabbitMQ management ${method} ${path}: ${res.status} ${await res.text()}`);
  }
}

// Whatever happens to the test process, the services it started do not outlive it.
const children = new Set();
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });

/** One service process; resolves once its JSON log says `listening_addr`. */
class Service {
  constructor(name, env, logPath) {
    this.name = name;
    this.logPath = logPath;
    this.log = createWriteStream(logPath, { flags: 'a' });
    this.child = spawn(join(REPO, 'target', 'debug', name), [], {
      cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.add(this.child);
    this.exited = new Promise((r) => this.child.once('exit', (code, signal) => {
      children.delete(this.child);
      r({ code, signal });
    }));
    this.port = new Promise((resolveP, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name} did not start within 60 s:\n${this.logs()}`)), 60_000);
      createInterface({ input: this.child.stdout }).on('line', (line) => {
        this.log.write(line + '\n');
        try {
          const addr = JSON.parse(line).listening_addr ?? JSON.parse(line).fields?.listening_addr;
          if (addr) { clearTimeout(timer); resolveP(Number(String(addr).split(':').pop())); }
        } catch { /* not JSON */ }
      });
      createInterface({ input: this.child.stderr }).on('line', (line) => this.log.write(line + '\n'));
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`${name} exited (${code ?? signal}) before listening:\n${this.logs()}`));
      });
    });
    this.port.catch(() => {});
  }

  logs() {
    try { return readFileSync(this.logPath, 'utf8'); } catch { return ''; }
  }

  async kill(signal = 'SIGKILL') {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    await this.exited;
  }
}

/**
 * A producer and a gateway of their own: fresh vhost, temp SQLite file.
 * `extraOrigins`: origins besides the gateway's own to put in REDDOT_ALLOWED_ORIGINS.
 * `gatewayPort`: a fixed port for the gateway (MQTT: RabbitMQ's auth backend asks
 * 127.0.0.1:15690, see MQTT_AUTH_PORT), else a free one.
 */
export async function startStack({ extraOrigins = [], env: extraEnv = {}, gatewayPort: fixedPort } = {}) {
  ensureBuilt();
  const dir = mkdtempSync(join(tmpdir(), 'reddot-browser-'));
  const vhost = `reddot-browser-${randomBytes(6).toString('hex')}`;
  await management('PUT', `/vhosts/${vhost}`);
  await management('PUT', `/permissions/${vhost}/guest`, { configure: '.*', write: '.*', read: '.*' });
  // The gateway's own origin must be allowed for the iframe transport (its postMessage
  // target is checked against REDDOT_ALLOWED_ORIGINS even for the gateway's own page),
  // so the gateway's port is chosen here rather than with :0.
  const gatewayPort = fixedPort ?? await freePort();
  const gatewayOrigin = `http://127.0.0.1:${gatewayPort}`;
  const env = {
    PATH: process.env.PATH,
    RUST_LOG: process.env.RUST_LOG || 'info',
    REDDOT_DATABASE_URL: `sqlite://${join(dir, 'db.sqlite')}?mode=rwc`,
    REDDOT_AMQP_URL: `amqp://guest:guest@127.0.0.1:5672/${vhost}`,
    REDDOT_JWT_SECRET: randomBytes(24).toString('hex'),
    REDDOT_API_KEYS: API_KEY,
    REDDOT_PRODUCER_ADDR: '127.0.0.1:0',
    REDDOT_GATEWAY_ADDR: `127.0.0.1:${gatewayPort}`,
    REDDOT_LOG_FORMAT: 'json',
    REDDOT_RELAY_POLL_MS: '100',
    REDDOT_ALLOWED_ORIGINS: [gatewayOrigin, `http://localhost:${gatewayPort}`, ...extraOrigins].join(','),
    ...extraEnv,
  };
  const stack = {
    dir, vhost, env, gatewayPort, gatewayOrigin,
    gatewayUrl: gatewayOrigin,
    producer: null, gateway: null, producerUrl: null,
    restarts: 0,
  };
  const startGateway = async () => {
    const svc = new Service('reddot-gateway', env, join(dir, `gateway-${stack.restarts}.log`));
    stack.gateway = svc;
    const port = await svc.port;
    if (port !== gatewayPort) throw new Error(`gateway listens on ${port}, expected ${gatewayPort}`);
    return svc;
  };
  // The previous gateway's socket (a restart here, or the last test's gateway on a fixed
  // port) may linger for a moment: retry the bind briefly.
  const startGatewayRetrying = async () => {
    for (let i = 0; ; i++) {
      try { return await startGateway(); } catch (e) {
        if (i >= 20 || !/bind|in use/i.test(String(e))) throw e;
        await sleep(250);
      }
    }
  };
  try {
    stack.producer = new Service('reddot-producer', env, join(dir, 'producer.log'));
    stack.producerUrl = `http://127.0.0.1:${await stack.producer.port}`;
    await startGatewayRetrying();
  } catch (e) {
    await stopStack(stack);
    throw e;
  }

  /** POST /api/v1/notifications; resolves to the 201 body. */
  stack.post = async (body) => {
    const res = await fetch(`${stack.producerUrl}/api/v1/notifications`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const json = await res.json();
    if (res.status !== 201) throw new Error(`POST notification: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  stack.notify = (user, title, extra = {}) =>
    stack.post({ to: { users: [user] }, kind: 'comment', title, body: `body of ${title}`, ...extra });
  /** A gateway JWT minted by the producer. */
  stack.token = async (user, ttl = 3600) => {
    const res = await fetch(`${stack.producerUrl}/api/v1/tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: user, ttl_seconds: ttl }),
    });
    const json = await res.json();
    if (res.status !== 200) throw new Error(`POST token: ${res.status} ${JSON.stringify(json)}`);
    return json.token;
  };
  /** The demo page for `user`, token in the fragment. */
  stack.demoUrl = (token, params = {}) => {
    const frag = new URLSearchParams({ token, producer: stack.producerUrl, ...params });
    return `${stack.gatewayUrl}/#${frag}`;
  };
  /** Kills the gateway (SIGKILL: no goodbye to clients) and starts a new one on the same port. */
  stack.killGateway = async () => { await stack.gateway.kill('SIGKILL'); };
  stack.startGateway = async () => {
    stack.restarts += 1;
    return startGatewayRetrying();
  };
  stack.logs = () => [
    `---- producer ----\n${stack.producer?.logs() ?? ''}`,
    `---- gateway ----\n${stack.gateway?.logs() ?? ''}`,
  ].join('\n');
  stack.stop = () => stopStack(stack);
  return stack;
}

async function stopStack(stack) {
  if (stack.stopped) return;
  stack.stopped = true;
  if (process.env.REDDOT_SHOW_LOGS && stack.logs) console.error(stack.logs());
  await Promise.all([stack.gateway?.kill(), stack.producer?.kill()]);
  await management('DELETE', `/vhosts/${stack.vhost}`).catch((e) => console.error(String(e)));
  rmSync(stack.dir, { recursive: true, force: true });
}

/**
 * Runs `fn(stack)` with a stack of its own; on failure prints the services' logs (tail),
 * always stops it.
 */
export async function withStack(opts, fn) {
  const stack = await startStack(opts);
  try {
    return await fn(stack);
  } catch (e) {
    const tail = stack.logs().split('\n').slice(-80).join('\n');
    console.error(`services' logs (tail):\n${tail}`);
    throw e;
  } finally {
    await stack.stop();
  }
}

/** Where RabbitMQ's HTTP auth backend asks for MQTT logins (scripts/services). */
export const MQTT_AUTH_PORT = 15690;

/**
 * Lands MQTT and Web-MQTT logins in `vhost` (RabbitMQ's global port-to-vhost mapping;
 * the broker never reads a vhost out of the username). Broker-wide: one MQTT test at a
 * time. Returns a function that removes the mapping.
 */
export async function routeMqttTo(vhost) {
  const path = '/global-parameters/mqtt_port_to_vhost_mapping';
  await management('PUT', path, { name: 'mqtt_port_to_vhost_mapping', value: { 1884: vhost, 15675: vhost } });
  return () => management('DELETE', path);
}

/** A static server on its own origin ("another site") serving `pages` ({path: html}). */
export async function staticSite(pages) {
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const body = pages[path];
    if (body === undefined) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(body);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return { origin, close: () => new Promise((r) => server.close(r)) };
}

/** Polls `fn` (sync or async) until it returns a truthy value; throws after `timeout` ms. */
export async function waitFor(fn, { timeout = 5000, interval = 25, message = 'condition' } = {}) {
  const start = Date.now();
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) { last = e; }
    if (Date.now() - start > timeout) {
      throw new Error(`timed out after ${timeout} ms waiting for ${message} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(interval);
  }
}

// ---- page helpers ---------------------------------------------------------------

/** Opens the gateway's demo page as `token`'s user; `page.errors` collects page errors. */
export async function openDemo(context, stack, token, params = {}) {
  const page = await context.newPage();
  watchErrors(page);
  await page.goto(stack.demoUrl(token, params));
  return page;
}

/** Records uncaught errors and CSP / Trusted Types violations in `page.errors`. */
export function watchErrors(page) {
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Trusted Type|Uncaught/i.test(m.text())) {
      page.errors.push(`console: ${m.text()}`);
    }
  });
  return page;
}

/** Waits until the demo page's client reports `state` (default: open). */
export function waitState(page, state = 'open', timeout = 10_000) {
  return page.waitForFunction(
    (s) => window.demo && window.demo.rd.status.state === s, state, { timeout, polling: 20 });
}

/** The badge as shown ('' when hidden). */
export function badgeText(page) {
  return page.evaluate(() => {
    const b = document.getElementById('badge');
    return b.hidden ? '' : b.textContent;
  });
}

/** Waits until the badge shows `text` ('' = hidden). */
export function waitBadge(page, text, timeout = 5000) {
  return page.waitForFunction((t) => {
    const b = document.getElementById('badge');
    return (b.hidden ? '' : b.textContent) === t;
  }, text, { timeout, polling: 20 });
}

/** Ids of the notification events the page's client emitted, in order. */
export function received(page) {
  return page.evaluate(() => window.demo.received.slice());
}

/** A JWT signed with the stack's secret (to make tokens that expire within seconds). */
export function signJwt(secret, claims) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = enc({ alg: 'HS256', typ: 'JWT' });
  const body = enc(claims);
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}
