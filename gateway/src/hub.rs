//! The in-process hub: which sessions each user has on this node, and fan-out of every
//! delivery from the node's queue to them. It also owns the per-user binding lifecycle:
//! the first session of a user asks for a `reddot.direct` binding, the last one leaving
//! asks for its removal. Those requests are queued under the same lock that changes the
//! session set and executed in order by one task, so the broker's bindings always end
//! up matching the sessions (no binding left behind, none removed under a new session).
//!
//! The hub knows nothing of HTTP or of AMQP channels.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use reddot_shared::{
    amqp::{Delivered, Incoming},
    domain::{Audience, UserId},
    metrics as m,
};
use tokio::sync::{Notify, mpsc};

use crate::events::Note;

const SHARDS: usize = 64;

/// What the hub sends a session.
#[derive(Debug, Clone)]
pub enum HubMsg {
    Notification(Arc<Note>),
    /// The user's read state changed on some node: send a fresh unread count.
    ReadStateChanged,
    /// Live messages may have been lost (broker reconnect): catch up from the database.
    Resync,
    /// The node is stopping: the session ends after what is queued before this.
    Close,
}

/// Whether a user's binding is in place on this node's queue. It only ever goes from
/// unbound to bound (set by the AMQP side once the broker confirms it). An atomic and
/// one `Notify` rather than a `watch` channel: every online user holds one, and a watch
/// channel's state is several times larger.
#[derive(Debug, Default)]
pub struct Binding {
    bound: AtomicBool,
    confirmed: Notify,
}

impl Binding {
    pub fn is_bound(&self) -> bool {
        self.bound.load(Ordering::Acquire)
    }

    /// Marks the binding as in place and wakes everyone waiting for it.
    pub fn confirm(&self) {
        self.bound.store(true, Ordering::Release);
        self.confirmed.notify_waiters();
    }

    /// Returns once the binding is in place.
    pub async fn wait(&self) {
        let confirmed = self.confirmed.notified();
        tokio::pin!(confirmed);
        // Registered before the check, so a confirmation between the two is not missed.
        confirmed.as_mut().enable();
        if !self.is_bound() {
            confirmed.await;
        }
    }
}

/// A binding change for the AMQP side to carry out, in order.
#[derive(Debug)]
pub enum BindCmd {
    Bind { user: String, binding: Arc<Binding> },
    Unbind { user: String },
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("too many sessions for this user")]
    TooManySessions,
    #[error("this node is at its connection limit")]
    NodeFull,
    #[error("this node is stopping")]
    NodeStopping,
}

/// One session of a user, in joining order.
struct Entry {
    id: u64,
    tx: flume::Sender<HubMsg>,
    /// A held long poll: it yields its place to a newcomer when the user is at her
    /// limit (see [`Hub::join_long_poll`]).
    held_poll: bool,
}

struct Slot {
    sessions: Vec<Entry>,
    binding: Arc<Binding>,
    /// When the last session left; the binding goes `unbind_delay` later unless a
    /// session comes back first.
    empty_since: Option<Instant>,
}

pub struct Hub {
    shards: Vec<Mutex<HashMap<String, Slot>>>,
    hasher: RandomState,
    next_id: AtomicU64,
    sessions: AtomicUsize,
    users: AtomicUsize,
    binder: mpsc::UnboundedSender<BindCmd>,
    max_sessions_per_user: usize,
    max_sessions: usize,
    unbind_delay: Duration,
    closed: AtomicBool,
}

/// One note for every session a delivery reaches, so its frames are rendered once.
fn note(n: &Delivered) -> Arc<Note> {
    Arc::new(Note::new(n.id, n.created_at, n.expires_at, n.json.clone()))
}

/// A session's place in the hub; leaving is its `Drop`.
pub struct Membership {
    hub: Arc<Hub>,
    user: String,
    id: u64,
    pub rx: flume::Receiver<HubMsg>,
    pub binding: Arc<Binding>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.user, self.id);
    }
}

impl Hub {
    /// `unbind_delay`: how long a user's binding outlives her last session, so that
    /// clients reconnecting (a network blip, a node restart elsewhere, a deploy) find
    /// it in place instead of costing the broker an unbind and a bind each.
    pub fn new(
        binder: mpsc::UnboundedSender<BindCmd>,
        max_sessions_per_user: usize,
        max_sessions: usize,
        unbind_delay: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            sessions: AtomicUsize::new(0),
            users: AtomicUsize::new(0),
            binder,
            max_sessions_per_user,
            max_sessions,
            unbind_delay,
            closed: AtomicBool::new(false),
        })
    }

    fn shard(&self, user: &str) -> &Mutex<HashMap<String, Slot>> {
        &self.shards[(self.hasher.hash_one(user) as usize) % SHARDS]
    }

    fn lock<'a>(
        shard: &'a Mutex<HashMap<String, Slot>>,
    ) -> std::sync::MutexGuard<'a, HashMap<String, Slot>> {
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a session for `user` with a queue of `buffer` messages.
    pub fn join(self: &Arc<Self>, user: &UserId, buffer: usize) -> Result<Membership, JoinError> {
        self.join_as(user, buffer, false)
    }

    /// Adds a held long poll. The server cannot tell that a long poll's client went
    /// away until it answers (up to 60 s later), so abandoned polls (a reloaded page,
    /// a client with a short timeout) filled the user's sessions and turned her away
    /// on every transport. At the limit, the oldest held poll is answered (`204`: its
    /// client, if still there, asks again) to make room for any newcomer.
    pub fn join_long_poll(
        self: &Arc<Self>,
        user: &UserId,
        buffer: usize,
    ) -> Result<Membership, JoinError> {
        self.join_as(user, buffer, true)
    }

    fn join_as(
        self: &Arc<Self>,
        user: &UserId,
        buffer: usize,
        held_poll: bool,
    ) -> Result<Membership, JoinError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(JoinError::NodeStopping);
        }
        if self.sessions.load(Ordering::Relaxed) >= self.max_sessions {
            return Err(JoinError::NodeFull);
        }
        // flume, not tokio's mpsc: a tokio channel costs ~1 KiB from the start (its
        // state and a first block of 32 slots), a flume one ~200 B until messages queue.
        // Every idle session holds one.
        let (tx, rx) = flume::bounded(buffer.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut shard = Self::lock(self.shard(user.as_str()));
        let slot = match shard.get_mut(user.as_str()) {
            Some(slot) => {
                if slot.sessions.len() >= self.max_sessions_per_user {
                    let Some(oldest) = slot.sessions.iter().position(|e| e.held_poll) else {
                        return Err(JoinError::TooManySessions);
                    };
                    // Its membership's leave() then finds it gone and counts nothing.
                    let _ = slot.sessions.remove(oldest).tx.try_send(HubMsg::Close);
                    self.sessions.fetch_sub(1, Ordering::Relaxed);
                }
                if slot.empty_since.take().is_some() {
                    self.users.fetch_add(1, Ordering::Relaxed);
                    metrics::gauge!(m::USERS_ONLINE).increment(1.0);
                }
                slot
            }
            None => {
                let binding = Arc::new(Binding::default());
                let _ = self.binder.send(BindCmd::Bind {
                    user: user.as_str().to_owned(),
                    binding: binding.clone(),
                });
                self.users.fetch_add(1, Ordering::Relaxed);
                metrics::gauge!(m::USERS_ONLINE).increment(1.0);
                shard.entry(user.as_str().to_owned()).or_insert(Slot {
                    sessions: Vec::new(),
                    binding,
                    empty_since: None,
                })
            }
        };
        slot.sessions.push(Entry { id, tx, held_poll });
        let binding = slot.binding.clone();
        self.sessions.fetch_add(1, Ordering::Relaxed);
        drop(shard);
        Ok(Membership {
            hub: self.clone(),
            user: user.as_str().to_owned(),
            id,
            rx,
            binding,
        })
    }

    fn leave(&self, user: &str, id: u64) {
        let mut shard = Self::lock(self.shard(user));
        let Some(slot) = shard.get_mut(user) else {
            return;
        };
        let before = slot.sessions.len();
        slot.sessions.retain(|e| e.id != id);
        if slot.sessions.len() < before {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
        }
        if slot.sessions.is_empty() && slot.empty_since.is_none() {
            self.users.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(m::USERS_ONLINE).decrement(1.0);
            if self.unbind_delay.is_zero() {
                shard.remove(user);
                let _ = self.binder.send(BindCmd::Unbind {
                    user: user.to_owned(),
                });
            } else {
                slot.empty_since = Some(Instant::now());
            }
        }
    }

    /// Removes the bindings of users whose last session left `unbind_delay` ago.
    /// Called periodically.
    pub fn sweep(&self) {
        for shard in &self.shards {
            let mut shard = Self::lock(shard);
            shard.retain(|user, slot| {
                let expired = slot
                    .empty_since
                    .is_some_and(|t| t.elapsed() >= self.unbind_delay);
                if expired {
                    let _ = self.binder.send(BindCmd::Unbind { user: user.clone() });
                }
                !expired
            });
        }
    }

    /// Routes one delivery from the node queue to the sessions it is for.
    pub fn dispatch(&self, incoming: Incoming) {
        match incoming {
            // One message, cloned per session: building it per user would touch the
            // delivery's reference count twice more for each, a cache line the HTTP
            // workers dropping their copies contend for.
            Incoming::Notification(n) if n.audience == Audience::All => {
                let msg = HubMsg::Notification(note(&n));
                for shard in &self.shards {
                    let mut shard = Self::lock(shard);
                    for slot in shard.values_mut() {
                        self.send_all(slot, &msg);
                    }
                }
            }
            Incoming::Notification(n) => {
                let msg = HubMsg::Notification(note(&n));
                for user in &n.users {
                    let mut shard = Self::lock(self.shard(user));
                    if let Some(slot) = shard.get_mut(user.as_str()) {
                        self.send_all(slot, &msg);
                    }
                }
            }
            Incoming::ReadState { user } => {
                let mut shard = Self::lock(self.shard(&user));
                if let Some(slot) = shard.get_mut(user.as_str()) {
                    self.send_all(slot, &HubMsg::ReadStateChanged);
                }
            }
        }
    }

    /// Tells every session to catch up from the database.
    pub fn resync_all(&self) {
        for shard in &self.shards {
            let mut shard = Self::lock(shard);
            for slot in shard.values_mut() {
                self.send_all(slot, &HubMsg::Resync);
            }
        }
    }

    /// Ends every session (after what is already queued for it) and refuses new ones:
    /// the node is stopping.
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::Release);
        for shard in &self.shards {
            let mut shard = Self::lock(shard);
            for slot in shard.values_mut() {
                for entry in slot.sessions.drain(..) {
                    // A full queue needs no message: dropping its sender ends it too.
                    let _ = entry.tx.try_send(HubMsg::Close);
                    self.sessions.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Sends to each session of a user; a session whose queue is full is dropped from
    /// the hub (its transport then ends and the client resumes from its last id), so a
    /// reader that stalls can never make the node buffer without bound.
    fn send_all(&self, slot: &mut Slot, msg: &HubMsg) {
        let before = slot.sessions.len();
        slot.sessions.retain(|e| e.tx.try_send(msg.clone()).is_ok());
        let dropped = before - slot.sessions.len();
        if dropped > 0 {
            self.sessions.fetch_sub(dropped, Ordering::Relaxed);
            metrics::counter!(m::SESSIONS_DROPPED, "reason" => "slow_consumer")
                .increment(dropped as u64);
            tracing::info!(dropped, "closed sessions that stopped reading");
        }
        // An emptied slot stays until its memberships drop: they unbind it then.
    }

    /// Users with sessions now, with their bindings (for re-binding after a reconnect).
    pub fn online(&self) -> Vec<(String, Arc<Binding>)> {
        let mut out = Vec::with_capacity(self.users.load(Ordering::Relaxed));
        for shard in &self.shards {
            out.extend(
                Self::lock(shard)
                    .iter()
                    .map(|(u, s)| (u.clone(), s.binding.clone())),
            );
        }
        out
    }

    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn user_count(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }
}
