/*!
 * reddot.js — the browser client of Reddot (in-app notifications, the unread red dot).
 * Served by every gateway at /reddot.js. No dependencies, no build step. MIT licence.
 *
 *   const rd = new Reddot({ gateway: "https://gw.example.com", token: jwt,
 *                           transport: "auto", getToken: async () => fetchNewJwt() });
 *   rd.on("notification", n => …);   // each notification once, in id order
 *   rd.on("unread", u => badge(u.count));   // u = {count, by_kind, as_of} (+ badge, badge_by_kind: the same)
 *   rd.on("status", s => …);         // {state, transport, leader, attempt, retryIn, reason}
 *   rd.on("reset", r => reloadInbox());  // r.reason: gap_too_large, or cursor_ahead (see below)
 *   rd.on("read", r => …);           // {ids} or {all: true}: marked read in this browser
 *   rd.on("removed", r => …);        // {id}: deleted in this browser
 *   // "status" and "unread" listeners are also called at once with the current value.
 *   await rd.markRead([id]); await rd.markAllRead(); await rd.remove(id);
 *   await rd.list({ before, limit, unreadOnly, kind });  // {items, next_before, cursor}
 *   rd.setTransport("ws"); rd.setToken(jwt); rd.close();
 *   // MQTT over RabbitMQ's Web-MQTT plugin (default URL: ws(s)://<gateway host>:15675/ws):
 *   new Reddot({ gateway, token, transport: "mqtt", mqtt: { url: "wss://mq.example.com/ws" } });
 *
 * Module format — why a plain script: one file has to work both as a classic
 * <script src=".../reddot.js"> and from ES modules, and a file containing `export` is a
 * syntax error as a classic script. So this is a UMD-style script: it defines `Reddot`
 * on `globalThis` (and `module.exports` under CommonJS), and has no import/export.
 * Modules load it for its side effect, from any allowed origin (it is served with CORS):
 *
 *   import "https://gw.example.com/reddot.js";
 *   const { Reddot } = globalThis;
 *
 * or, as a tiny ESM wrapper of your own (reddot.mjs):
 *   import "https://gw.example.com/reddot.js"; export default globalThis.Reddot;
 *
 * How it works
 * - Transports: "sse" (EventSource), "ws" (WebSocket), "longpoll" (GET /v1/poll),
 *   "poll" (GET /v1/unread with ETag, then the inbox for what is new), "iframe" (a hidden
 *   forever-iframe posting messages; the page's origin must be in the gateway's
 *   REDDOT_ALLOWED_ORIGINS), "mqtt" (MQTT 3.1.1 over RabbitMQ's Web-MQTT, see below) and
 *   "auto": SSE, falling back to WebSocket, then long polling,
 *   when a transport fails twice while the gateway itself answers; live on a fallback,
 *   it tries SSE again after `upgradeAfter` (5 min, doubling while SSE still fails, at
 *   most an hour), so a passing fault does not keep the page on long polling. A long poll is also
 *   answered by a read on another device (with the new count and no notifications). The
 *   iframe and SSE cannot see their keep-alives, so a stream cut mid-way or left
 *   half-open would look alive for good: a watchdog asks GET /v1/unread (usually a 304)
 *   every `iframeCheckInterval` (5 s) / `sseCheckInterval` (30 s) and reconnects when a
 *   notification the gateway has is still missing 1.5 s later (the iframe also when it
 *   gets no answer).
 * - A connection counts as up once the gateway's first `unread` arrives (every transport
 *   sends one at once); one that gives none within `openTimeout` (a buffering proxy)
 *   counts as failed. Reconnects back off exponentially with jitter. `getToken`, when
 *   given, is called before every reconnect, so a page outlives its tokens
 *   (`token_expired`, WebSocket close 4001, or a 401 → new token → resume).
 * - Resume: the largest notification id seen is kept in localStorage per gateway and
 *   user (the user is the token's `sub`, read without verification) and sent as
 *   `last_event_id`; a notification with an id not above it is a duplicate and dropped.
 *   On first use the cursor is the `cursor` of the page's first list() call (so a page
 *   that renders that list misses nothing), else the gateway's latest id.
 * - One connection per browser and user: tabs elect a leader with a Web Lock
 *   (navigator.locks). Only the leader connects; it relays every event to the other tabs
 *   over a BroadcastChannel. The lock is released when the leader's tab closes or
 *   crashes, and the next tab in the lock's queue takes over at once, resuming from the
 *   last id it saw. So ten tabs use one connection, under HTTP/1.1's six per host. The
 *   connection uses the leader's token, getToken and transport (setTransport and
 *   setToken in any tab apply to all); list/markRead/remove are plain requests from each
 *   tab (a failed one puts the server's count back on the badge). Where
 *   there are no Web Locks (plain-http pages on hosts other than localhost are not a
 *   secure context) a lease in localStorage elects the leader instead (taken over within
 *   about 4 s of a crash, at once when the leader's page closes). Without BroadcastChannel, or
 *   without both locks and localStorage (or with `share: false`), each instance connects
 *   alone.
 * - MQTT: a minimal MQTT 3.1.1 client (CONNECT, SUBSCRIBE, PUBLISH QoS 0/1 with PUBACK,
 *   PINGREQ) that logs in as the user id with the token as password and the client id
 *   `<user id>/<random>`, and subscribes to `reddot/users/<user id>` and
 *   `reddot/broadcast`. MQTT cannot resume, so after the SUBACK it catches up through the
 *   gateway (GET /v1/poll?timeout=0 from the cursor) while holding back what MQTT
 *   delivers meanwhile, then delivers that, dropping duplicates by id. Reads on other
 *   devices reach it as with long polling (GET /v1/unread every 15 s). The broker cannot
 *   end a connection at the token's `exp`, so the client does, and reconnects with a
 *   fresh token. Not part of "auto": it needs the broker's Web-MQTT port.
 * - A cursor ahead of the gateway: after the gateway's database was restored or reset, the
 *   cursor stored in this browser can be past every id it holds, and every new
 *   notification would look like a duplicate. A stream (sse, ws, iframe) notices it in
 *   its first `unread` (`as_of` below the cursor): the client goes back to `as_of`,
 *   emits `reset` with reason `cursor_ahead` and opens a session from there.
 * - The badge: the gateway's `unread` covers ids up to `as_of`; notifications received
 *   with a larger id are not in its count yet. So the client adds them: the `unread`
 *   event's `count` and `by_kind` are the exact badge on every transport (`as_of` the
 *   largest id they cover), emitted again on each notification; `badge` and
 *   `badge_by_kind` repeat them for pages written against earlier versions.
 *   Reads made in one tab update every tab's badge at once (the read's answer is shared);
 *   the gateway also pushes `unread` to every session on reads from other devices.
 */
(function (root, factory) {
  'use strict';
  var Reddot = factory(root);
  if (typeof module === 'object' && module && module.exports) module.exports = Reddot;
  if (root) root.Reddot = Reddot;
}(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this, function (global) {
  'use strict';

  var TRANSPORTS = ['sse', 'ws', 'longpoll', 'poll', 'iframe', 'mqtt'];
  var AUTO_ORDER = ['sse', 'ws', 'longpoll'];
  // Transports whose sessions get `unread` pushed by the gateway after reads and deletes.
  var STREAMS = { sse: true, ws: true, iframe: true };
  var DEFAULTS = {
    transport: 'auto',
    share: true,          // one connection per browser and user (Web Locks + BroadcastChannel)
    pollInterval: 3000,   // ms between GET /v1/unread for transport "poll"
    longPollTimeout: 25,  // s a long poll may be held by the gateway (≤ 60)
    minBackoff: 500,      // ms, first reconnect delay (before jitter)
    maxBackoff: 15000,    // ms, largest reconnect delay
    openTimeout: 10000,   // ms for a new connection to deliver its first `unread`
    iframeCheckInterval: 5000, // ms between the iframe transport's liveness checks
    sseCheckInterval: 30000,   // ms between the SSE transport's liveness checks (0: none)
    failuresBeforeFallback: 2, // auto: failures of one transport before trying the next
    upgradeAfter: 300000, // ms live on a fallback before auto tries SSE again (doubling; 0: never)
    mqtt: null,           // {url}: the broker's Web-MQTT endpoint, for transport "mqtt"
  };

  // ---- small helpers ------------------------------------------------------------

  function decodeJwt(token) {
    var part = String(token || '').split('.')[1];
    if (!part) return null;
    try {
      var b64 = part.replace(/-/g, '+').replace(/_/g, '/');
      while (b64.length % 4) b64 += '=';
      var bin = atob(b64);
      var bytes = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      return null;
    }
  }

  function randomId() {
    return Math.random().toString(36).slice(2) + Date.now().toString(36);
  }

  function storage() {
    try { return global.localStorage || null; } catch (e) { return null; }
  }

  /** Whether localStorage can be written (not disabled, not full): the lease needs it. */
  function storageWorks() {
    var s = storage();
    if (!s) return false;
    try { s.setItem('reddot:probe', '1'); s.removeItem('reddot:probe'); return true; } catch (e) { return false; }
  }

  // Lease election (no Web Locks): how long a lease lasts unrenewed, and how long a claim
  // waits for other tabs' claims to settle before reading back who won.
  var LEASE_MS = 3000;
  var LEASE_SETTLE_MS = 200;

  /** Half fixed, half random ("equal jitter"): never 0, never a synchronized herd. */
  function backoff(attempt, min, max) {
    var d = Math.min(max, min * Math.pow(2, attempt));
    return Math.round(d / 2 + Math.random() * d / 2);
  }

  function HttpError(status, body) {
    var msg = body && body.error && body.error.message ? body.error.message : 'HTTP ' + status;
    var e = new Error(msg);
    e.name = 'ReddotHttpError';
    e.status = status;
    e.body = body;
    return e;
  }

  // ---- the client ---------------------------------------------------------------

  /**
   * @param {object} options
   * @param {string} [options.gateway]   gateway base URL (default: this page's origin)
   * @param {string} options.token       a gateway JWT (`sub` = user id)
   * @param {string} [options.transport] auto | sse | ws | longpoll | poll | iframe | mqtt
   * @param {{url: string}} [options.mqtt] Web-MQTT endpoint for "mqtt" (default
   *        ws(s)://<gateway host>:15675/ws, RabbitMQ's default)
   * @param {function(): (string|Promise<string>)} [options.getToken] called before each
   *        reconnect and after a 401 / token expiry; returns a fresh JWT
   */
  function Reddot(options) {
    if (!(this instanceof Reddot)) return new Reddot(options);
    var o = {};
    var k;
    for (k in DEFAULTS) o[k] = DEFAULTS[k];
    for (k in options || {}) if (options[k] !== undefined) o[k] = options[k];
    if (TRANSPORTS.indexOf(o.transport) < 0 && o.transport !== 'auto') {
      throw new TypeError('Reddot: unknown transport "' + o.transport + '"');
    }
    var base = new URL(o.gateway || (global.location && global.location.origin), global.location && global.location.href);
    this.gateway = base.origin + base.pathname.replace(/\/+$/, '');
    this.gatewayOrigin = base.origin;
    this.options = o;
    this.token = o.token;
    var claims = decodeJwt(o.token);
    if (!claims || typeof claims.sub !== 'string') {
      throw new TypeError('Reddot: token must be a JWT whose `sub` is the user id');
    }
    this.user = claims.sub;

    this._listeners = {};
    this._id = randomId();
    this._ns = 'reddot:' + this.gatewayOrigin + ':' + this.user;
    this._cursorKey = this._ns + ':cursor';
    this._closed = false;
    this._leader = false;
    this._gen = 0;           // bumps on every (re)connect; stale callbacks are ignored
    this._conn = null;
    this._timers = {};
    // Read answers applied so far: a GET /v1/unread sent before one and answered after it
    // may predate the read, and is dropped (else a stale count showed until the next).
    this._reads = 0;
    this._attempt = 0;
    this._failures = {};
    this._autoIndex = 0;
    this._upgrades = 0;      // auto: tries of the first transport since it last went live
    this._unread = null;     // {count, by_kind, as_of} as last said by the gateway
    this._extra = new Map(); // id → kind: received, unread, id > _unread.as_of
    this._afterReset = false;
    this._pendingList = null;
    this._status = { state: 'connecting', transport: null, leader: false, attempt: 0, retryIn: null, reason: null };

    var locks = global.navigator && global.navigator.locks;
    var shared = o.share && typeof global.BroadcastChannel === 'function' &&
      (locks || storageWorks());
    if (shared) {
      // Subscribe before reading the cursor: nothing relayed after the read is missed.
      this._bc = new global.BroadcastChannel(this._ns);
      this._bc.onmessage = this._onMessage.bind(this);
    }
    this._lastId = this._readCursor();
    if (shared) {
      var self = this;
      if (locks) {
        this._lockAbort = typeof AbortController === 'function' ? new AbortController() : null;
        locks.request(this._ns, this._lockAbort ? { signal: this._lockAbort.signal } : {}, function () {
          if (self._closed) return undefined;
          return new Promise(function (release) {
            self._releaseLock = release;
            self._becomeLeader();
          });
        }).catch(function () { /* aborted by close() */ });
      } else {
        this._leaseElection();
      }
      this._post({ t: 'hello', from: this._id });
      // No answer (no leader yet, or it is still connecting): read the count ourselves.
      this._timers.snapshot = setTimeout(function () {
        if (!self._unread && !self._closed) self._fetchUnread().catch(function () {});
      }, 1500);
    } else {
      var me = this;
      Promise.resolve().then(function () { me._becomeLeader(); });
    }
    // Back online (laptop woke up, network returned): retry now rather than at the
    // end of a long backoff.
    this._onOnline = this._retryNow.bind(this);
    if (global.addEventListener) global.addEventListener('online', this._onOnline);
  }

  Reddot.TRANSPORTS = TRANSPORTS.slice();
  Reddot.version = '1.0.0';
  Reddot.decodeJwt = decodeJwt;

  var P = Reddot.prototype;

  // ---- events -------------------------------------------------------------------

  /** Subscribes `fn` to `type`; returns a function that unsubscribes it. */
  P.on = function (type, fn) {
    (this._listeners[type] = this._listeners[type] || []).push(fn);
    var self = this;
    // Called at once like any emit: a listener that throws must not cost the caller
    // its unsubscribe function.
    var now = type === 'status' ? [this.status]
      : (type === 'unread' && this._unread ? [this._badgeView()] : null);
    if (now) {
      try { fn(now[0]); } catch (e) { setTimeout(function () { throw e; }); }
    }
    return function () { self.off(type, fn); };
  };

  P.off = function (type, fn) {
    var l = this._listeners[type];
    if (l) this._listeners[type] = l.filter(function (f) { return f !== fn; });
  };

  P._emit = function (type, data) {
    var l = (this._listeners[type] || []).slice();
    for (var i = 0; i < l.length; i++) {
      try { l[i](data); } catch (e) { setTimeout(function () { throw e; }); }
    }
  };

  Object.defineProperty(P, 'status', {
    get: function () {
      var s = {};
      for (var k in this._status) s[k] = this._status[k];
      return s;
    },
  });

  Object.defineProperty(P, 'isLeader', { get: function () { return this._leader; } });

  /** The exact badge now: {count, by_kind, as_of, badge, badge_by_kind}, or null. */
  Object.defineProperty(P, 'unread', { get: function () { return this._unread ? this._badgeView() : null; } });

  Object.defineProperty(P, 'lastEventId', { get: function () { return this._lastId; } });

  P._setStatus = function (patch, relay) {
    var changed = false;
    for (var k in patch) {
      if (this._status[k] !== patch[k]) { this._status[k] = patch[k]; changed = true; }
    }
    if (!changed) return;
    if (relay !== false && this._leader) this._post({ t: 'status', status: this.status });
    this._emit('status', this.status);
  };

  // ---- state: cursor, dedupe, badge ----------------------------------------------

  P._readCursor = function () {
    var s = storage();
    var v = s ? s.getItem(this._cursorKey) : null;
    return v !== null && /^\d+$/.test(v) ? Number(v) : null;
  };

  /** Stores the cursor; `back`: also when it is below the stored one. */
  P._saveCursor = function (back) {
    var s = storage();
    if (!s || this._lastId === null) return;
    try {
      // Never move the stored cursor back (another instance may be ahead), unless the
      // gateway says that what it holds ends below it (see _cursorAhead).
      var stored = this._readCursor();
      if (stored === null || this._lastId > stored || back) s.setItem(this._cursorKey, String(this._lastId));
    } catch (e) { /* storage full or disabled: resume from the page's list instead */ }
  };

  P._acceptNotification = function (n) {
    if (!n || typeof n.id !== 'number') return false;
    if (this._lastId !== null && n.id <= this._lastId) return false; // duplicate
    this._lastId = n.id;
    if (this._leader) this._saveCursor();
    if (!n.read && (!this._unread || n.id > this._unread.as_of)) this._extra.set(n.id, n.kind || 'notice');
    return true;
  };

  P._applyUnread = function (u) {
    if (!u || typeof u.count !== 'number') return;
    var asOf = typeof u.as_of === 'number' ? u.as_of : (u.latest_id || 0);
    this._unread = { count: u.count, by_kind: u.by_kind || {}, as_of: asOf };
    var self = this;
    this._extra.forEach(function (_, id) { if (id <= asOf) self._extra.delete(id); });
    if (this._afterReset) {
      // After a reset the gateway skipped to its latest id (or, see _cursorAhead, went
      // back to it): so do we.
      this._afterReset = false;
      if (this._lastId !== asOf) {
        this._lastId = asOf;
        if (this._leader) this._saveCursor(true);
      }
    }
    clearTimeout(this._timers.snapshot);
  };

  /**
   * Is the cursor ahead of everything the gateway holds for this user? After a restore
   * or a reset of the gateway's database (or a purge of its newest rows) the ids go on
   * below it, and every new notification would be dropped as a duplicate, for good.
   * Only a stream's first `unread` tells: its `as_of` is the largest id that ever
   * concerned the user (polling's `latest_id` drops below the cursor when the newest
   * notification is deleted, which is no sign of anything).
   */
  P._cursorAhead = function (kind, u) {
    return STREAMS[kind] === true && !!u && typeof u.as_of === 'number' &&
      this._lastId !== null && u.as_of < this._lastId;
  };

  P._badgeView = function () {
    var u = this._unread || { count: 0, by_kind: {}, as_of: 0 };
    var byKind = {};
    var asOf = u.as_of;
    var k;
    for (k in u.by_kind) byKind[k] = u.by_kind[k];
    this._extra.forEach(function (kind, id) {
      byKind[kind] = (byKind[kind] || 0) + 1;
      if (id > asOf) asOf = id;
    });
    var count = u.count + this._extra.size;
    return { count: count, by_kind: byKind, as_of: asOf, badge: count, badge_by_kind: byKind };
  };

  /** One event from the gateway (leader) or relayed by the leader (follower). */
  P._ingest = function (type, data, relay) {
    if (this._closed) return;
    if (type === 'notification') {
      if (!this._acceptNotification(data)) return;
      if (relay) this._post({ t: 'event', type: type, data: data });
      this._emit('notification', data);
      if (this._unread) this._emit('unread', this._badgeView());
    } else if (type === 'unread') {
      if (!data || typeof data.count !== 'number') return;
      this._applyUnread(data);
      if (relay) this._post({ t: 'event', type: type, data: data });
      this._emit('unread', this._badgeView());
    } else if (type === 'reset') {
      this._extra.clear();
      this._afterReset = true;
      if (relay) this._post({ t: 'event', type: type, data: data });
      this._emit('reset', data || { reason: 'gap_too_large' });
    }
  };

  // ---- tabs: leader election and relay ------------------------------------------

  P._post = function (msg) {
    if (this._bc && !this._closed) {
      try { this._bc.postMessage(msg); } catch (e) { /* channel closed */ }
    }
  };

  P._onMessage = function (e) {
    var m = e.data || {};
    if (this._closed) return;
    switch (m.t) {
      case 'event':
        if (!this._leader) this._ingest(m.type, m.data, false);
        break;
      case 'status':
        if (!this._leader) this._setStatus(Object.assign({}, m.status, { leader: false }), false);
        break;
      case 'hello':
        if (this._leader) {
          var extra = [];
          this._extra.forEach(function (kind, id) { extra.push([id, kind]); });
          this._post({ t: 'snapshot', to: m.from, status: this.status, unread: this._unread, extra: extra });
        }
        break;
      case 'snapshot':
        if (m.to !== this._id || this._leader) break;
        this._setStatus(Object.assign({}, m.status, { leader: false }), false);
        if (m.unread) {
          this._extra = new Map(m.extra || []);
          this._applyUnread(m.unread);
          this._emit('unread', this._badgeView());
        }
        break;
      case 'unread': // the answer of a read in another tab
        this._reads++;
        this._applyUnread(m.data);
        this._emit('unread', this._badgeView());
        break;
      case 'read':
        this._emit('read', m.data);
        break;
      case 'removed':
        if (m.data) this._extra.delete(Number(m.data.id));
        this._emit('removed', m.data);
        break;
      case 'token': // setToken in another tab: the shared connection is the leader's
        var claims = decodeJwt(m.token);
        if (claims && claims.sub === this.user) this._adoptToken(m.token);
        break;
      case 'transport':
        this.options.transport = m.transport;
        if (this._leader) this._restart();
        break;
      case 'lease_free': // the leader's page went away (lease election only)
        if (this._leaseTick) this._leaseTick(m.from);
        break;
    }
  };

  /**
   * Leader election without Web Locks, which exist in secure contexts only (a plain-http
   * page on a host other than localhost has none): a lease in localStorage that the
   * leader renews every second. Another tab takes over when it lapses (LEASE_MS, found
   * at the next once-a-second check), or at
   * once when the leader's page goes away (it frees the lease and says so). Tabs that
   * claim together each write their own id; the last write wins, read back after the
   * writes have settled. A leader that finds another's lease (its renewals were held back
   * in a background tab) steps down; followers drop what they saw twice meanwhile.
   * localStorage reaches other tabs' processes a little later than a BroadcastChannel
   * message, so `lease_free` names the tab that freed the lease: its lease, still read
   * here, counts as free (else the takeover waited for the lease to lapse).
   */
  P._leaseElection = function () {
    var self = this;
    var key = this._ns + ':lease';
    var read = function () {
      try { return JSON.parse(global.localStorage.getItem(key)); } catch (e) { return null; }
    };
    var write = function () {
      try { global.localStorage.setItem(key, JSON.stringify({ id: self._id, until: Date.now() + LEASE_MS })); } catch (e) { /* full */ }
    };
    var tick = function (freedBy) {
      if (self._closed) return;
      var lease = read();
      var mine = lease && lease.id === self._id;
      var free = !lease || !(lease.until > Date.now()) || (freedBy !== undefined && lease.id === freedBy);
      if (self._leader) {
        if (mine || free) write(); else self._stepDown();
        return;
      }
      if (!free && !mine) return;
      write();
      setTimeout(function () {
        var now = read();
        if (!self._closed && !self._leader && now && now.id === self._id) self._becomeLeader();
      }, LEASE_SETTLE_MS);
    };
    this._leaseTick = tick;
    this._leaseRelease = function () {
      var lease = read();
      if (!lease || lease.id !== self._id) return;
      try { global.localStorage.removeItem(key); } catch (e) { /* disabled */ }
      self._post({ t: 'lease_free', from: self._id });
    };
    // The removal itself, once it reaches this tab, in case the message was lost.
    this._leaseStorage = function (e) { if (e.key === key && e.newValue === null) tick(); };
    if (global.addEventListener) {
      global.addEventListener('pagehide', this._leaseRelease);
      global.addEventListener('storage', this._leaseStorage);
    }
    this._leaseTimer = setInterval(tick, 1000);
    tick();
  };

  /** Leaves leadership (lease election only): the connection closes, events come relayed. */
  P._stepDown = function () {
    if (!this._leader) return;
    this._stopConnection();
    this._leader = false;
    this._setStatus({ leader: false }, false);
  };

  P._becomeLeader = function () {
    if (this._closed || this._leader) return;
    this._leader = true;
    clearTimeout(this._timers.snapshot);
    this._setStatus({ leader: true, state: 'connecting' }, false);
    // A tab that saw no notification yet (it opened before any cursor was stored) goes
    // on from where the last leader left off, not from the gateway's latest id: what
    // came during the handover is then replayed rather than missed.
    if (this._lastId === null) this._lastId = this._readCursor();
    this._saveCursor();
    this._connect();
  };

  // ---- connection management (leader only) ---------------------------------------

  P._activeTransport = function () {
    var t = this.options.transport;
    if (t !== 'auto') return t;
    return AUTO_ORDER[Math.min(this._autoIndex, AUTO_ORDER.length - 1)];
  };

  /** The resume cursor; on first use, the first list()'s cursor or the latest id. */
  P._ensureCursor = function () {
    var self = this;
    if (this._lastId !== null) return Promise.resolve(this._lastId);
    var wait = this._pendingList ? this._pendingList.catch(function () {}) : Promise.resolve();
    return wait.then(function () {
      if (self._lastId !== null) return self._lastId;
      return self._request('GET', '/v1/unread', undefined, { timeout: 15000 }).then(function (r) {
        if (self._lastId === null) self._lastId = r.body.latest_id || 0;
        self._saveCursor();
        return self._lastId;
      });
    });
  };

  P._connect = function () {
    if (this._closed || !this._leader) return;
    var self = this;
    var gen = ++this._gen;
    var kind = this._activeTransport();
    this._setStatus({ state: this._attempt ? 'reconnecting' : 'connecting', transport: kind, retryIn: null, attempt: this._attempt });
    this._ensureCursor().then(function () {
      if (gen !== self._gen || self._closed) return;
      var live = false;
      var ended = false;
      var h = {
        event: function (type, data) {
          if (gen !== self._gen || ended) return;
          if (type === 'unread' && !live && self._cursorAhead(kind, data)) {
            // Go back to the gateway's ids (every tab: the reset makes them take `as_of`
            // from the count that follows), tell the app to reload its inbox, and open
            // a session from there: this one skips every id up to the old cursor.
            ended = true;
            clearTimeout(self._timers.open);
            var c = self._conn;
            self._conn = null;
            if (c) c.close();
            self._ingest('reset', { reason: 'cursor_ahead' }, true);
            self._ingest('unread', data, true);
            self._connect();
            return;
          }
          self._ingest(type, data, true);
          if (type === 'unread' && !live) {
            live = true;
            clearTimeout(self._timers.open);
            self._attempt = 0;
            self._failures[kind] = 0;
            self._setStatus({ state: 'open', transport: kind, attempt: 0, retryIn: null, reason: null });
            self._planUpgrade(gen, kind);
          }
        },
        fail: function (reason) {
          if (gen !== self._gen || ended) return;
          ended = true;
          clearTimeout(self._timers.open);
          var c = self._conn;
          self._conn = null;
          if (c) c.close();
          self._onFail(kind, live, reason || 'error');
        },
      };
      self._timers.open = setTimeout(function () { if (!live) h.fail('timeout'); }, self.options.openTimeout);
      try {
        self._conn = OPENERS[kind](self, h);
      } catch (e) {
        h.fail('error');
      }
    }, function (err) {
      if (gen !== self._gen || self._closed) return;
      self._onFail(kind, false, err && err.status === 401 ? 'unauthorized' : 'down');
    });
  };

  /**
   * auto, live on a fallback: try the first transport again after `upgradeAfter` ms,
   * twice as long after each try that fell back again (at most an hour). A proxy that
   * broke SSE for a while, or a node that refused it while stopping, would otherwise
   * keep the page on long polling until it reloads. The try reconnects from the cursor,
   * so nothing is missed while it lasts.
   */
  P._planUpgrade = function (gen, kind) {
    if (this.options.transport !== 'auto') return;
    if (kind === AUTO_ORDER[0]) {
      this._upgrades = 0;
      return;
    }
    var after = this.options.upgradeAfter;
    if (!(after > 0)) return;
    var self = this;
    clearTimeout(this._timers.upgrade);
    this._timers.upgrade = setTimeout(function () {
      if (gen !== self._gen || self._closed || !self._leader) return;
      self._upgrades++;
      self._restart();
    }, Math.min(after * Math.pow(2, this._upgrades), 3600000));
  };

  /** Decides what a failed connection means, then schedules the next attempt. */
  P._onFail = function (kind, wasLive, reason) {
    if (this._closed || !this._leader) return;
    var self = this;
    var tokenProblem = reason === 'token_expired' || reason === 'unauthorized';
    var check = (!wasLive && !tokenProblem) ? this._probe() : Promise.resolve(tokenProblem ? 'unauthorized' : 'ok');
    var gen = this._gen;
    check.then(function (probe) {
      if (gen !== self._gen || self._closed) return undefined;
      if (probe === 'unauthorized') {
        // Expired or refused token: only a new one helps (getToken, or setToken later).
        return self._refreshToken().then(function (fresh) {
          if (gen !== self._gen || self._closed) return;
          if (fresh === null) {
            // getToken failed (the app's token endpoint down, say): ask again later,
            // backing off, rather than give up for good.
            self._schedule(gen, backoff(self._attempt++, self.options.minBackoff, self.options.maxBackoff),
              true, 'token_refresh_failed');
            return;
          }
          if (!fresh) {
            self._setStatus({ state: 'unauthorized', retryIn: null, reason: reason });
            return;
          }
          // A token that simply expired is replaced at once; a refused one backs off.
          var d = reason === 'token_expired' ? Math.round(Math.random() * 250)
            : backoff(self._attempt++, self.options.minBackoff, self.options.maxBackoff);
          self._schedule(gen, d, false, reason);
        });
      }
      if (!wasLive && probe === 'ok' && self.options.transport === 'auto') {
        // The gateway answers but this transport does not work here: try the next one.
        self._failures[kind] = (self._failures[kind] || 0) + 1;
        if (self._failures[kind] >= self.options.failuresBeforeFallback && self._autoIndex < AUTO_ORDER.length - 1) {
          self._autoIndex++;
          self._attempt = 0;
        }
      }
      self._schedule(gen, backoff(self._attempt++, self.options.minBackoff, self.options.maxBackoff), true,
        probe === 'down' ? 'unreachable' : reason);
      return undefined;
    });
  };

  /** Reconnects after `delay` ms, asking getToken for a fresh token first if `refresh`. */
  P._schedule = function (gen, delay, refresh, reason) {
    var self = this;
    this._setStatus({ state: 'reconnecting', transport: this._activeTransport(), attempt: this._attempt, retryIn: delay, reason: reason });
    this._timers.retry = setTimeout(function () {
      if (gen !== self._gen || self._closed || !self._leader) return;
      (refresh ? self._refreshToken() : Promise.resolve()).then(function () {
        if (gen === self._gen && !self._closed) self._connect();
      });
    }, delay);
  };

  /**
   * Calls getToken (if any) → true: a new token; false: none (no getToken, or it gave
   * the same or another user's token); null: getToken threw or rejected (try again).
   */
  P._refreshToken = function () {
    var self = this;
    var get = this.options.getToken;
    if (typeof get !== 'function') return Promise.resolve(false);
    return Promise.resolve().then(get).then(function (t) {
      if (typeof t === 'string' && t && t !== self.token) {
        var c = decodeJwt(t);
        if (c && c.sub === self.user) { self.token = t; return true; }
      }
      return false;
    }, function () { return null; });
  };

  /** Is the gateway reachable, and is our token good? 'ok' | 'unauthorized' | 'down'. */
  P._probe = function () {
    return this._request('GET', '/v1/unread', undefined, { retry401: false, timeout: 5000 }).then(
      function () { return 'ok'; },
      function (e) { return e && e.status === 401 ? 'unauthorized' : 'down'; });
  };

  P._stopConnection = function () {
    this._gen++;
    clearTimeout(this._timers.retry);
    clearTimeout(this._timers.open);
    clearTimeout(this._timers.upgrade);
    var c = this._conn;
    this._conn = null;
    if (c) c.close();
  };

  P._retryNow = function () {
    if (this._leader && !this._closed && this._status.state === 'reconnecting') {
      // An attempt may be in flight: end it, or it would go on beside the new one.
      this._stopConnection();
      this._attempt = 0;
      var self = this;
      var gen = this._gen;
      this._refreshToken().then(function () { if (gen === self._gen) self._connect(); });
    }
  };

  /** Reconnect now (transport or token changed). */
  P._restart = function () {
    if (!this._leader || this._closed) return;
    this._stopConnection();
    this._attempt = 0;
    this._failures = {};
    this._autoIndex = 0;
    this._connect();
  };

  // ---- HTTP ---------------------------------------------------------------------

  P._url = function (path, params) {
    var u = new URL(this.gateway + path);
    for (var k in params || {}) if (params[k] !== undefined && params[k] !== null) u.searchParams.set(k, params[k]);
    return u.toString();
  };

  /** fetch with the token; a 401 calls getToken and retries once. → {status, body, headers} */
  P._request = function (method, path, body, opts) {
    var self = this;
    opts = opts || {};
    var attempt = function (retry) {
      var headers = { Authorization: 'Bearer ' + self.token };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      if (opts.headers) for (var h in opts.headers) headers[h] = opts.headers[h];
      var ctrl = typeof AbortController === 'function' ? new AbortController() : null;
      var timer = opts.timeout && ctrl ? setTimeout(function () { ctrl.abort(); }, opts.timeout) : null;
      // The connection's signal outlives its requests: each listener goes when its
      // request settles (they piled up, one per poll, for as long as the page lived).
      var onAbort = function () { ctrl.abort(); };
      if (opts.signal && ctrl) opts.signal.addEventListener('abort', onAbort, { once: true });
      var settled = function () {
        clearTimeout(timer);
        if (opts.signal) opts.signal.removeEventListener('abort', onAbort);
      };
      return fetch(self._url(path, opts.query), {
        method: method, headers: headers, cache: 'no-store', credentials: 'omit',
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: ctrl ? ctrl.signal : undefined,
      }).then(function (res) {
        settled();
        if (res.status === 401 && retry && opts.retry401 !== false) {
          return self._refreshToken().then(function (fresh) {
            if (fresh) return attempt(false);
            return res.json().catch(function () { return null; }).then(function (b) { throw HttpError(401, b); });
          });
        }
        if (res.status === 204 || res.status === 304) return { status: res.status, body: null, headers: res.headers };
        return res.text().then(function (text) {
          var parsed = null;
          try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
          if (!res.ok) throw HttpError(res.status, parsed);
          return { status: res.status, body: parsed, headers: res.headers };
        });
      }, function (err) {
        settled();
        throw err;
      });
    };
    return attempt(true);
  };

  P._fetchUnread = function () {
    var self = this;
    return this._request('GET', '/v1/unread').then(function (r) {
      if (!self._unread) {
        self._applyUnread(r.body);
        self._emit('unread', self._badgeView());
      }
    });
  };

  /** Shares a read's answer with this tab and every other one. */
  P._readAnswer = function (answer, what) {
    if (answer && answer.unread) {
      this._reads++;
      this._applyUnread(answer.unread);
      this._post({ t: 'unread', data: answer.unread });
      this._emit('unread', this._badgeView());
    }
    this._post({ t: 'read', data: what });
    this._emit('read', what);
    return answer;
  };

  /** Puts the server's count on the badge (of every tab, with `share`). */
  P._recount = function (share) {
    var self = this;
    var reads = self._reads;
    self._request('GET', '/v1/unread').then(function (r) {
      // A read answered meanwhile is newer than this count.
      if (self._closed || reads !== self._reads || !r.body) return;
      if (share) {
        self._reads++;
        self._post({ t: 'unread', data: r.body });
      }
      self._applyUnread(r.body);
      self._emit('unread', self._badgeView());
    }, function () { /* offline: the next push or reconnect corrects it */ });
  };

  /**
   * The rejection handler of a read or delete: the badge already dropped what it was
   * for (so it does not wait for the answer), so a failure (404, network, 401) puts the
   * server's count back, then rejects as before.
   */
  P._badgeBack = function () {
    var self = this;
    return function (err) {
      self._recount(false);
      throw err;
    };
  };

  // ---- public API ---------------------------------------------------------------

  /** Marks notifications read. → {changed, unread} */
  P.markRead = function (ids) {
    var self = this;
    ids = [].concat(ids).map(Number).filter(function (n) { return n > 0; });
    if (!ids.length) return Promise.resolve({ changed: 0, unread: this._unread });
    ids.forEach(function (id) { self._extra.delete(id); });
    return this._request('POST', '/v1/notifications/read', { ids: ids })
      .then(function (r) { return self._readAnswer(r.body, { ids: ids }); }, this._badgeBack());
  };

  /** Marks every notification read. → {changed, unread} */
  P.markAllRead = function () {
    var self = this;
    this._extra.clear();
    return this._request('POST', '/v1/notifications/read', { all: true })
      .then(function (r) { return self._readAnswer(r.body, { all: true }); }, this._badgeBack());
  };

  /** Hides a notification from the inbox and counts. */
  P.remove = function (id) {
    var self = this;
    this._extra.delete(Number(id));
    return this._request('DELETE', '/v1/notifications/' + encodeURIComponent(id)).then(function () {
      self._post({ t: 'removed', data: { id: Number(id) } });
      self._emit('removed', { id: Number(id) });
      // A delete answers no count, and only streams get one pushed: on polling the
      // badge kept counting the removed notification until the next poll.
      if (!STREAMS[self._status.transport]) self._recount(true);
    }, this._badgeBack());
  };

  /** One inbox page, newest first. → {items, next_before, cursor} */
  P.list = function (opts) {
    opts = opts || {};
    var self = this;
    var p = this._request('GET', '/v1/notifications', undefined, { query: {
      before: opts.before, limit: opts.limit,
      unread_only: opts.unreadOnly === undefined ? undefined : String(!!opts.unreadOnly),
      kind: opts.kind,
    } }).then(function (r) {
      // First use: resume right after what this (unfiltered, first) page shows.
      if (self._lastId === null && opts.before == null && !opts.unreadOnly && !opts.kind) {
        self._lastId = r.body.cursor || 0;
        if (self._leader) self._saveCursor();
      }
      return r.body;
    });
    if (this._lastId === null && opts.before == null) this._pendingList = p;
    return p;
  };

  /** Switches transport (in every tab of this user: the shared connection is the leader's). */
  P.setTransport = function (transport) {
    if (TRANSPORTS.indexOf(transport) < 0 && transport !== 'auto') {
      throw new TypeError('Reddot: unknown transport "' + transport + '"');
    }
    this.options.transport = transport;
    this._post({ t: 'transport', transport: transport });
    if (this._leader) this._restart();
  };

  /** Replaces the token (e.g. after `status.state === "unauthorized"`). */
  P.setToken = function (token) {
    var c = decodeJwt(token);
    if (!c || c.sub !== this.user) throw new TypeError('Reddot: the new token is for another user');
    this._post({ t: 'token', token: token });
    this._adoptToken(token);
  };

  /** Takes `token` (this tab's or another's); the leader reconnects if it was refused. */
  P._adoptToken = function (token) {
    this.token = token;
    if (this._leader && (this._status.state === 'unauthorized' || !this._conn)) this._restart();
  };

  /** Closes the connection (another tab takes over if this was the leader). */
  P.close = function () {
    if (this._closed) return;
    this._stopConnection();
    this._closed = true;
    this._leader = false;
    for (var t in this._timers) clearTimeout(this._timers[t]);
    if (this._lockAbort) this._lockAbort.abort();
    if (this._releaseLock) this._releaseLock();
    if (this._leaseRelease) {
      clearInterval(this._leaseTimer);
      this._leaseRelease();
      if (global.removeEventListener) {
        global.removeEventListener('pagehide', this._leaseRelease);
        global.removeEventListener('storage', this._leaseStorage);
      }
    }
    if (this._bc) this._bc.close();
    if (global.removeEventListener) global.removeEventListener('online', this._onOnline);
    this._status.state = 'closed';
    this._emit('status', this.status);
    this._listeners = {};
  };

  // ---- transports: each calls h.event(type, data) and h.fail(reason) ----------------

  var OPENERS = {};

  /**
   * For streams whose keep-alives the page cannot see (the iframe's HTML comments, SSE's
   * `: ping` lines): asks the gateway (GET /v1/unread, usually a 304) every `interval`
   * ms. A newer notification than the last one received still missing 1.5 s later
   * (and, with `strict`, no answer) means the stream is dead — cut mid-way by a crash,
   * or half-open after a NAT, a proxy or a sleeping laptop lost it, which the browser
   * does not notice — so the connection fails and the client resumes. Without `strict`
   * a failed check is only tried again: an SSE stream goes on flowing while the
   * gateway's database is away, and a check answered 503 must not end it. Returns the
   * function that stops it.
   */
  function watchStream(rd, h, interval, strict) {
    var etag = null;
    var latest = 0;      // the gateway's latest id at the last check
    var missing = null;  // an id the gateway had at the previous check and we had not
    var stopped = false;
    var timer = null;
    var check = function () {
      rd._request('GET', '/v1/unread', undefined, {
        headers: etag ? { 'If-None-Match': etag } : undefined, timeout: 10000, retry401: false,
      }).then(function (r) {
        if (stopped) return;
        if (r.status === 200) {
          etag = r.headers.get('ETag');
          latest = r.body.latest_id || 0;
        }
        var have = rd._lastId || 0;
        if (missing !== null && have < missing) { h.fail('stalled'); return; }
        missing = latest > have ? latest : null;
        timer = setTimeout(check, missing !== null ? 1500 : interval);
      }, function (e) {
        if (stopped) return;
        if (strict) h.fail(e && e.status === 401 ? 'unauthorized' : 'error');
        else timer = setTimeout(check, interval);
      });
    };
    if (interval > 0) timer = setTimeout(check, interval);
    return function () { stopped = true; clearTimeout(timer); };
  }

  OPENERS.sse = function (rd, h) {
    var es = new global.EventSource(rd._url('/v1/stream', { access_token: rd.token, last_event_id: rd._lastId }));
    var json = function (type) {
      return function (e) {
        var data;
        try { data = JSON.parse(e.data); } catch (err) { return; }
        h.event(type, data);
      };
    };
    es.addEventListener('notification', json('notification'));
    es.addEventListener('unread', json('unread'));
    es.addEventListener('reset', json('reset'));
    es.addEventListener('token_expired', function () { h.fail('token_expired'); });
    // EventSource would reconnect by itself, without our backoff or a fresh token.
    es.onerror = function () { h.fail('error'); };
    // The `: ping` comments keep proxies from closing the stream but never reach us.
    var stopWatch = watchStream(rd, h, rd.options.sseCheckInterval, false);
    return { close: function () { stopWatch(); es.close(); } };
  };

  OPENERS.ws = function (rd, h) {
    var url = rd._url('/v1/ws', { access_token: rd.token, last_event_id: rd._lastId }).replace(/^http/, 'ws');
    var ws = new global.WebSocket(url);
    var pingTimer = null;
    var pongDeadline = null;
    var closed = false;
    // The gateway drops a client silent for 45 s; a ping also finds half-open TCP.
    var ping = function () {
      if (ws.readyState !== 1) return;
      ws.send('{"type":"ping"}');
      clearTimeout(pongDeadline);
      pongDeadline = setTimeout(function () { h.fail('timeout'); }, 10000);
    };
    ws.onopen = function () { pingTimer = setInterval(ping, 20000); };
    ws.onmessage = function (e) {
      clearTimeout(pongDeadline);
      var m;
      try { m = JSON.parse(e.data); } catch (err) { return; }
      if (m.type === 'token_expired') { h.fail('token_expired'); return; }
      if (m.type === 'notification' || m.type === 'unread' || m.type === 'reset') {
        var type = m.type;
        delete m.type;
        h.event(type, m);
      }
    };
    ws.onclose = function (e) { if (!closed) h.fail(e.code === 4001 ? 'token_expired' : 'error'); };
    ws.onerror = function () { /* onclose follows */ };
    return {
      close: function () {
        closed = true;
        clearInterval(pingTimer);
        clearTimeout(pongDeadline);
        try { ws.close(1000); } catch (e) { /* not open yet */ }
      },
    };
  };

  OPENERS.longpoll = function (rd, h) {
    var ctrl = new AbortController();
    var stopped = false;
    var etag = null;
    var timeout = Math.min(60, Math.max(1, rd.options.longPollTimeout));
    var fail = function (e) {
      if (stopped) return;
      h.fail(e && e.status === 401 ? 'unauthorized' : 'error');
    };
    // A read on another device answers a held poll with the new count; one made between
    // two polls, by the next poll: it sends the ETag of the count it has, and the gateway
    // answers at once when the count moved on. GET /v1/unread, read at start and every
    // 15 s (usually a 304), is the fallback for gateways without that check.
    var checkUnread = function () {
      var reads = rd._reads;
      return rd._request('GET', '/v1/unread', undefined, {
        headers: etag ? { 'If-None-Match': etag } : undefined, signal: ctrl.signal, timeout: 10000,
      }).then(function (r) {
        if (stopped || r.status === 304 || rd._reads !== reads) return;
        etag = r.headers.get('ETag');
        h.event('unread', r.body);
      });
    };
    var unreadTimer = null;
    var loop = function () {
      if (stopped) return;
      rd._request('GET', '/v1/poll', undefined, {
        query: { cursor: rd._lastId, timeout: timeout }, signal: ctrl.signal, timeout: (timeout + 15) * 1000,
        headers: etag ? { 'If-None-Match': etag } : undefined,
      }).then(function (r) {
        if (stopped) return;
        if (r.status === 200 && r.body) {
          if (r.body.unread && r.headers.get('ETag')) etag = r.headers.get('ETag');
          if (r.body.reset) h.event('reset', { reason: 'gap_too_large' });
          (r.body.notifications || []).forEach(function (n) { h.event('notification', n); });
          if (r.body.unread) h.event('unread', r.body.unread);
          if (r.body.reset && typeof r.body.cursor === 'number' && r.body.cursor > (rd._lastId || 0)) {
            rd._lastId = r.body.cursor;
            rd._saveCursor();
          }
        }
        loop();
      }, fail);
    };
    checkUnread().then(function () {
      unreadTimer = setInterval(function () { checkUnread().catch(function () {}); }, 15000);
      loop();
    }, fail);
    return { close: function () { stopped = true; clearInterval(unreadTimer); ctrl.abort(); } };
  };

  OPENERS.poll = function (rd, h) {
    var ctrl = new AbortController();
    var stopped = false;
    var etag = null;
    var timer = null;
    var cap = 1000;
    // New notifications since the cursor, oldest first, from the inbox (newest first).
    var fetchNew = function (since, latest) {
      var found = [];
      var page = function (before) {
        return rd._request('GET', '/v1/notifications', undefined, {
          query: { limit: 100, before: before }, signal: ctrl.signal, timeout: 15000,
        }).then(function (r) {
          var items = r.body.items || [];
          var older = false;
          for (var i = 0; i < items.length; i++) {
            if (items[i].id <= since) { older = true; break; }
            found.push(items[i]);
          }
          if (older || r.body.next_before == null) return false;
          if (found.length >= cap) return true; // too many: reset
          return page(r.body.next_before);
        });
      };
      return page(undefined).then(function (tooMany) {
        if (stopped) return [];
        if (tooMany) {
          h.event('reset', { reason: 'gap_too_large' });
          rd._lastId = Math.max(rd._lastId || 0, latest);
          rd._saveCursor();
          return [];
        }
        found.sort(function (a, b) { return a.id - b.id; });
        // As every transport delivers it: the inbox's `read` is not part of a
        // notification (the `unread` sent before them counts what is read).
        return found.map(function (n) {
          var copy = {};
          for (var key in n) if (key !== 'read') copy[key] = n[key];
          return copy;
        });
      });
    };
    var tick = function () {
      if (stopped) return;
      var reads = rd._reads;
      var stale = false;
      rd._request('GET', '/v1/unread', undefined, {
        headers: etag ? { 'If-None-Match': etag } : undefined, signal: ctrl.signal, timeout: 15000,
      }).then(function (r) {
        if (stopped) return undefined;
        if (r.status === 304) return undefined;
        if (rd._reads !== reads) { stale = true; return undefined; } // ask again at once
        etag = r.headers.get('ETag');
        var u = r.body;
        var latest = u.latest_id || 0;
        var step = latest > (rd._lastId || 0) ? fetchNew(rd._lastId || 0, latest) : Promise.resolve([]);
        return step.then(function (found) {
          if (stopped) return;
          // The count first: it covers the new ones up to `latest`, so the badge never
          // counts one twice while they are delivered.
          h.event('unread', { count: u.count, by_kind: u.by_kind, as_of: latest });
          found.forEach(function (n) { h.event('notification', n); });
        });
      }).then(function () {
        if (!stopped) timer = setTimeout(tick, stale ? 0 : rd.options.pollInterval);
      }, function (e) {
        if (!stopped) h.fail(e && e.status === 401 ? 'unauthorized' : 'error');
      });
    };
    tick();
    return { close: function () { stopped = true; clearTimeout(timer); ctrl.abort(); } };
  };

  OPENERS.iframe = function (rd, h) {
    var doc = global.document;
    var frame = doc.createElement('iframe');
    var done = false;
    frame.title = 'Reddot stream';
    frame.setAttribute('aria-hidden', 'true');
    frame.tabIndex = -1;
    // CSSOM properties, not a style attribute: allowed under a strict style-src.
    frame.style.position = 'absolute';
    frame.style.width = '0';
    frame.style.height = '0';
    frame.style.border = '0';
    frame.style.visibility = 'hidden';
    var onMessage = function (e) {
      if (done || e.origin !== rd.gatewayOrigin || e.source !== frame.contentWindow) return;
      var m = e.data;
      if (!m || typeof m !== 'object') return;
      if (m.type === 'token_expired') { h.fail('token_expired'); return; }
      if (m.type === 'notification' || m.type === 'unread' || m.type === 'reset') {
        var copy = {};
        for (var k in m) if (k !== 'type') copy[k] = m[k];
        h.event(m.type, copy);
      }
    };
    global.addEventListener('message', onMessage);
    // The document of a forever-iframe finishes loading only when the stream ends (or
    // at once, for an error page): either way, this connection is over.
    frame.addEventListener('load', function () { if (!done) h.fail('error'); });
    // But a stream cut mid-way (a gateway crash) leaves the document "loading" forever,
    // and the gateway's keep-alives are HTML comments the page cannot see: a watchdog.
    var stopWatch = watchStream(rd, h, rd.options.iframeCheckInterval, true);
    frame.src = rd._url('/v1/iframe', {
      access_token: rd.token, origin: global.location.origin, last_event_id: rd._lastId,
    });
    (doc.body || doc.documentElement).appendChild(frame);
    return {
      close: function () {
        done = true;
        stopWatch();
        global.removeEventListener('message', onMessage);
        frame.src = 'about:blank';
        if (frame.parentNode) frame.parentNode.removeChild(frame);
      },
    };
  };

  // MQTT 3.1.1 packets, as much of the protocol as a subscriber needs.
  var MQTT_KEEPALIVE = 30; // s; PINGREQ every half of it

  function mqttString(s) {
    var b = new TextEncoder().encode(s);
    return [b.length >> 8, b.length & 255].concat(Array.from(b));
  }

  function mqttPacket(first, body) {
    var len = [];
    var n = body.length;
    do { var d = n % 128; n = Math.floor(n / 128); len.push(n > 0 ? d | 128 : d); } while (n > 0);
    return new Uint8Array([first].concat(len, body));
  }

  /** Splits complete packets off `buf`: → {packets: [{type, flags, body}], rest}. */
  function mqttParse(buf) {
    var packets = [];
    var at = 0;
    for (;;) {
      var len = 0;
      var mult = 1;
      var i = at + 1;
      for (; i < buf.length && i < at + 5; i++) {
        len += (buf[i] & 127) * mult;
        mult *= 128;
        if (!(buf[i] & 128)) break;
      }
      if (i >= buf.length || buf.length < i + 1 + len) break;
      packets.push({ type: buf[at] >> 4, flags: buf[at] & 15, body: buf.subarray(i + 1, i + 1 + len) });
      at = i + 1 + len;
    }
    return { packets: packets, rest: buf.slice(at) };
  }

  OPENERS.mqtt = function (rd, h) {
    var base = new URL(rd.gateway);
    var url = (rd.options.mqtt && rd.options.mqtt.url) ||
      (base.protocol === 'https:' ? 'wss://' : 'ws://') + base.hostname + ':15675/ws';
    var ws = new global.WebSocket(url, ['mqtt']);
    ws.binaryType = 'arraybuffer';
    var buf = new Uint8Array(0);
    var closed = false;
    var held = [];          // delivered by MQTT while catching up from the gateway
    var catchingUp = true;
    var timers = [];
    var pongDeadline = null;
    var etag = null;
    var send = function (bytes) { if (ws.readyState === 1) ws.send(bytes); };
    var fail = function (reason) { if (!closed) h.fail(reason); };
    var checkUnread = function () {
      return rd._request('GET', '/v1/unread', undefined, {
        headers: etag ? { 'If-None-Match': etag } : undefined, timeout: 10000,
      }).then(function (r) {
        if (closed || r.status === 304) return;
        etag = r.headers.get('ETag');
        h.event('unread', { count: r.body.count, by_kind: r.body.by_kind, as_of: r.body.latest_id || 0 });
      });
    };
    // Everything after the cursor the gateway has, up to now (100 per answer).
    var catchUp = function () {
      return rd._request('GET', '/v1/poll', undefined, {
        query: { cursor: rd._lastId, timeout: 0 }, timeout: 15000,
      }).then(function (r) {
        if (closed || r.status !== 200 || !r.body) return undefined;
        if (r.body.reset) {
          h.event('reset', { reason: 'gap_too_large' });
          if (typeof r.body.cursor === 'number' && r.body.cursor > (rd._lastId || 0)) {
            rd._lastId = r.body.cursor;
            rd._saveCursor();
          }
        }
        var list = r.body.notifications || [];
        list.forEach(function (n) { h.event('notification', n); });
        return list.length ? catchUp() : undefined;
      });
    };
    var onPacket = function (p) {
      if (p.type === 2) { // CONNACK
        if (p.body[1] !== 0) { fail(p.body[1] === 4 || p.body[1] === 5 ? 'unauthorized' : 'error'); return; }
        var topics = [].concat(mqttString('reddot/users/' + rd.user), [1], mqttString('reddot/broadcast'), [1]);
        send(mqttPacket(0x82, [0, 1].concat(topics)));
      } else if (p.type === 9) { // SUBACK: live from here on; now read what came before
        if (Array.prototype.indexOf.call(p.body.subarray(2), 0x80) >= 0) { fail('unauthorized'); return; }
        catchUp().then(function () {
          if (closed) return undefined;
          catchingUp = false;
          held.sort(function (a, b) { return a.id - b.id; }).forEach(function (n) { h.event('notification', n); });
          held = [];
          return checkUnread();
        }).then(function () {
          timers.push(setInterval(function () { checkUnread().catch(function () {}); }, 15000));
        }, function (e) { fail(e && e.status === 401 ? 'unauthorized' : 'error'); });
      } else if (p.type === 3) { // PUBLISH
        var qos = (p.flags >> 1) & 3;
        var topicEnd = 2 + ((p.body[0] << 8) | p.body[1]);
        if (qos > 0) send(mqttPacket(0x40, [p.body[topicEnd], p.body[topicEnd + 1]]));
        var n;
        try { n = JSON.parse(new TextDecoder().decode(p.body.subarray(topicEnd + (qos > 0 ? 2 : 0)))); } catch (e) { return; }
        if (catchingUp) held.push(n); else h.event('notification', n);
      } else if (p.type === 13) { // PINGRESP
        clearTimeout(pongDeadline);
      }
    };
    ws.onopen = function () {
      var body = [].concat(mqttString('MQTT'), [4, 0xC2, 0, MQTT_KEEPALIVE],
        mqttString(rd.user + '/' + randomId()), mqttString(rd.user), mqttString(rd.token));
      send(mqttPacket(0x10, body));
      timers.push(setInterval(function () {
        send(mqttPacket(0xC0, []));
        clearTimeout(pongDeadline);
        pongDeadline = setTimeout(function () { fail('timeout'); }, 10000);
      }, MQTT_KEEPALIVE * 500));
    };
    ws.onmessage = function (e) {
      var next = new Uint8Array(buf.length + e.data.byteLength);
      next.set(buf);
      next.set(new Uint8Array(e.data), buf.length);
      var parsed = mqttParse(next);
      buf = parsed.rest;
      parsed.packets.forEach(onPacket);
    };
    // Over MQTT/TCP a refused CONNECT gets a CONNACK (onPacket reports it first); over
    // Web-MQTT RabbitMQ 3.10 just closes (1002 "unauthenticated"), also when it could not
    // reach its auth backend: 'error' lets the /v1/unread probe tell a bad token apart.
    ws.onclose = function () { fail('error'); };
    ws.onerror = function () { /* onclose follows */ };
    var claims = decodeJwt(rd.token);
    if (claims && typeof claims.exp === 'number') {
      // Capped: setTimeout fires at once for delays past 2^31 - 1 ms (~24.8 days).
      var left = Math.min(2147483647, Math.max(0, claims.exp * 1000 - Date.now()));
      timers.push(setTimeout(function () { fail('token_expired'); }, left));
    }
    return {
      close: function () {
        closed = true;
        timers.forEach(function (t) { clearTimeout(t); clearInterval(t); });
        clearTimeout(pongDeadline);
        send(mqttPacket(0xE0, []));
        try { ws.close(1000); } catch (e) { /* not open yet */ }
      },
    };
  };

  return Reddot;
}));
