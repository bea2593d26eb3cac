//! Short polling answered from memory. Counting a user's unread notifications is an
//! index range scan over her rows; a poll that finds nothing new (`If-None-Match`
//! matching, `304`) should not pay it. So a
//! polled user joins the hub like a session (the node binds her routing key), and her
//! last unread view stays cached until anything arrives for her — a notification, a
//! broadcast, a read-state change from any node, a broker reconnect — or until the next
//! of her notifications expires. She leaves the hub once nobody polled for `linger`.
//!
//! A view is only cached when it was read from the database while the binding was in
//! place and nothing arrived during the read (a generation counter), the same
//! "bind first, then read" rule that makes resumes gap-free. A hit is also checked
//! against the user's watermark (her highest notification ids, two index lookups), so a
//! `304` never hides a notification committed before the request, even one still on its
//! way through the broker. What only the broker tells — a read on another node — shows
//! as soon as its event arrives (milliseconds).
//!
//! Watermarks are read in batches ([`MarkReader`]): every poll waiting when a read
//! starts shares that one statement, and a poll arriving during a read waits for the
//! next one, so each answer still comes from a read that began after its request.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use reddot_shared::{
    domain::UserId,
    store::{StoreError, inbox},
    time::now_ms,
};
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::hub::{Binding, Hub, HubMsg, Membership};

/// Events queued for a watcher; it drains at once, so a few suffice.
const WATCH_BUFFER: usize = 16;
/// Polls sharing one watermark statement at most (SQLite caps a compound `SELECT` at
/// 500 parts).
const MARK_BATCH: usize = 128;
/// Watermark statements in flight at once: while one runs, the next batch gathers.
const MARK_READERS: usize = 2;

/// One unread answer: its JSON body and the `ETag` derived from it.
#[derive(Debug, Clone)]
pub struct View {
    pub etag: String,
    pub body: Arc<str>,
}

impl View {
    pub fn new(u: &inbox::Unread) -> View {
        let body = inbox::unread_view(u).to_string();
        let etag = format!(
            "\"{}\"",
            hex::encode(&Sha256::digest(body.as_bytes())[..12])
        );
        View {
            etag,
            body: body.into(),
        }
    }
}

/// Does an `If-None-Match` header name `etag` (or `*`)? Weak tags compare by their value.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .any(|tag| tag.trim().trim_start_matches("W/") == etag || tag.trim() == "*")
}

pub struct UnreadCache {
    db: DatabaseConnection,
    marks: MarkReader,
    hub: Arc<Hub>,
    linger: Duration,
    users: Mutex<HashMap<String, Arc<Watched>>>,
    shutdown: CancellationToken,
}

struct Watched {
    /// Bumped by everything that may change the view.
    generation: AtomicU64,
    last_poll_ms: AtomicI64,
    binding: Arc<Binding>,
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    generation: u64,
    /// The user's watermark read before the view.
    mark: inbox::Watermark,
    view: View,
    valid_until_ms: Option<i64>,
}

impl Watched {
    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        *lock(&self.cached) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl UnreadCache {
    pub fn new(
        db: DatabaseConnection,
        hub: Arc<Hub>,
        linger: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            marks: MarkReader::start(db.clone()),
            db,
            hub,
            linger,
            users: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// The user's cached view, if nothing changed since it was read. Hub events (from
    /// the broker) invalidate it; since a notification committed a moment ago may not
    /// have reached this node yet, a hit is also checked against the user's watermark in
    /// the database (two index lookups instead of counting her rows). A failed
    /// watermark read is a miss: the caller then reads, and reports, the database.
    pub async fn cached(self: &Arc<Self>, user: &UserId) -> Option<View> {
        let now = now_ms();
        let watched = self.watch(user, now)?;
        let generation = watched.generation.load(Ordering::Acquire);
        let hit = lock(&watched.cached)
            .as_ref()
            .filter(|c| c.generation == generation && c.valid_until_ms.is_none_or(|t| now < t))
            .map(|c| (c.view.clone(), c.mark));
        let (view, mark) = hit?;
        (self.marks.read(user).await == Some(mark)).then_some(view)
    }

    /// The user's view checked against a client's `If-None-Match`: `Ok(view)` when the
    /// client already has it (from memory when the cache can tell), `Err(view)` with the
    /// current view when not.
    pub async fn check(
        self: &Arc<Self>,
        user: &UserId,
        if_none_match: Option<&str>,
    ) -> Result<Result<View, View>, StoreError> {
        let matches = |view: &View| if_none_match.is_some_and(|v| etag_matches(v, &view.etag));
        if if_none_match.is_some()
            && let Some(view) = self.cached(user).await
            && matches(&view)
        {
            return Ok(Ok(view));
        }
        let view = self.load(user).await?;
        Ok(if matches(&view) { Ok(view) } else { Err(view) })
    }

    /// Reads the user's view from the database and caches it for her next polls.
    pub async fn load(self: &Arc<Self>, user: &UserId) -> Result<View, StoreError> {
        let now = now_ms();
        let watched = self.watch(user, now);
        // Read the generation and the watermark before the view: anything arriving or
        // committed during the read then keeps this view from being trusted.
        let generation = watched
            .as_ref()
            .filter(|w| w.binding.is_bound())
            .map(|w| w.generation.load(Ordering::Acquire));
        let mark = match generation {
            Some(_) => Some(inbox::watermark(&self.db, user).await?),
            None => None,
        };
        let view = View::new(&inbox::unread(&self.db, user, now).await?);
        if let (Some(w), Some(generation), Some(mark)) = (watched, generation, mark) {
            let valid_until_ms = inbox::next_expiry(&self.db, user, now).await?;
            let mut cached = lock(&w.cached);
            if w.generation.load(Ordering::Acquire) == generation {
                *cached = Some(Cached {
                    generation,
                    mark,
                    view: view.clone(),
                    valid_until_ms,
                });
            }
        }
        Ok(view)
    }

    /// Drops the user's cached view: her read state changed on this node (the broker's
    /// read-state event would do it too, a moment later; her next poll must not wait).
    pub fn invalidate(&self, user: &UserId) {
        if let Some(w) = lock(&self.users).get(user.as_str()) {
            w.invalidate();
        }
    }

    /// The user's watcher, started on her first poll; `None` when the cache is off or
    /// the node has no room for another hub member.
    fn watch(self: &Arc<Self>, user: &UserId, now: i64) -> Option<Arc<Watched>> {
        if self.linger.is_zero() || self.shutdown.is_cancelled() {
            return None;
        }
        let mut users = lock(&self.users);
        if let Some(w) = users.get(user.as_str()) {
            w.last_poll_ms.store(now, Ordering::Relaxed);
            return Some(w.clone());
        }
        let membership = match self.hub.join(user, WATCH_BUFFER) {
            Ok(m) => m,
            Err(err) => {
                tracing::debug!(error = %err, "short poll not cached");
                return None;
            }
        };
        let watched = Arc::new(Watched {
            generation: AtomicU64::new(0),
            last_poll_ms: AtomicI64::new(now),
            binding: membership.binding.clone(),
            cached: Mutex::new(None),
        });
        users.insert(user.as_str().to_owned(), watched.clone());
        tokio::spawn(
            self.clone()
                .follow(user.as_str().to_owned(), membership, watched.clone()),
        );
        Some(watched)
    }

    /// Invalidates the user's view on every hub event until she stops polling.
    async fn follow(self: Arc<Self>, user: String, membership: Membership, w: Arc<Watched>) {
        let linger_ms = i64::try_from(self.linger.as_millis()).unwrap_or(i64::MAX);
        let mut bound = w.binding.is_bound();
        loop {
            let idle_for = now_ms() - w.last_poll_ms.load(Ordering::Relaxed);
            if idle_for >= linger_ms {
                break;
            }
            let wait = Duration::from_millis(u64::try_from(linger_ms - idle_for).unwrap_or(0));
            tokio::select! {
                msg = membership.rx.recv_async() => match msg.ok() {
                    // Dropped by the hub, or the node is stopping: stop caching rather
                    // than risk a stale view.
                    None | Some(HubMsg::Close) => break,
                    Some(_) => w.invalidate(),
                },
                () = w.binding.wait(), if !bound => {
                    bound = true;
                    w.invalidate();
                }
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        let mut users = lock(&self.users);
        if users.get(&user).is_some_and(|cur| Arc::ptr_eq(cur, &w)) {
            users.remove(&user);
        }
        w.invalidate();
        drop(users);
        drop(membership);
    }
}

type MarkRequest = (String, oneshot::Sender<Option<inbox::Watermark>>);

/// Reads watermarks for many polls in one statement (see the module docs).
struct MarkReader {
    tx: mpsc::Sender<MarkRequest>,
}

impl MarkReader {
    fn start(db: DatabaseConnection) -> Self {
        let (tx, rx) = mpsc::channel(4 * MARK_BATCH);
        let rx = Arc::new(AsyncMutex::new(rx));
        for _ in 0..MARK_READERS {
            tokio::spawn(read_marks(db.clone(), rx.clone()));
        }
        Self { tx }
    }

    /// The user's watermark from a read that started after this call; `None` if the
    /// read failed.
    async fn read(&self, user: &UserId) -> Option<inbox::Watermark> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((user.as_str().to_owned(), reply)).await.ok()?;
        answer.await.ok().flatten()
    }
}

/// One batch reader: takes every request waiting (up to [`MARK_BATCH`]), reads their
/// users' watermarks in one statement, answers them. Ends with the cache.
async fn read_marks(db: DatabaseConnection, rx: Arc<AsyncMutex<mpsc::Receiver<MarkRequest>>>) {
    let mut batch = Vec::with_capacity(MARK_BATCH);
    loop {
        if rx.lock().await.recv_many(&mut batch, MARK_BATCH).await == 0 {
            return;
        }
        let mut users: Vec<&str> = batch.iter().map(|(u, _)| u.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let marks = match inbox::watermarks(&db, &users).await {
            Ok(marks) => marks,
            Err(err) => {
                tracing::warn!(error = %err, "watermark read failed; polls read the database");
                HashMap::new()
            }
        };
        for (user, reply) in batch.drain(..) {
            let _ = reply.send(marks.get(&user).copied());
        }
    }
}
