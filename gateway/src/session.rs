//! One client session, whatever its transport: the single implementation of resume.
//!
//! [`Session::open`] joins the hub (which binds the user's routing key on this node
//! first), waits until the binding is in place, then reads the database: everything
//! visible with id > cursor, in id order. Live deliveries that arrive meanwhile wait in
//! the session's queue; [`Session::next`] then sends them, skipping every id it already
//! sent. Because commit order equals id order and the binding existed before the read,
//! every notification is either in the replay or in the queue: no gap, no duplicate.
//! The same catch-up runs again whenever live delivery may have missed something (the
//! node reconnected to RabbitMQ, or the binding was confirmed late).

use std::{collections::VecDeque, pin::Pin, sync::Arc, time::Duration};

use reddot_shared::{
    domain::UserId,
    metrics as m,
    store::{StoreError, inbox},
    time::now_ms,
};
use sea_orm::DatabaseConnection;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::{
    events::{Event, Note},
    hub::{Hub, HubMsg, JoinError, Membership},
};

/// How long a new session waits for its user's binding before replaying anyway (it
/// catches up again once the binding is confirmed). An idle broker confirms in a few
/// milliseconds; in a storm of new bindings (~650/s on RabbitMQ 3.10) a longer wait
/// only holds each reconnect up: 3 s made 10,000 of them take 15 s instead of 5.
const BIND_WAIT: Duration = Duration::from_millis(250);

/// Recounts after an expiry are spread over this long (see `recount_no_later_than`).
const RECOUNT_SPREAD: Duration = Duration::from_secs(5);

/// What every session needs from the node.
pub struct SessionCtx {
    pub db: DatabaseConnection,
    pub hub: Arc<Hub>,
    pub replay_cap: usize,
    pub buffer: usize,
    pub heartbeat: Duration,
    pub shutdown: CancellationToken,
}

impl SessionCtx {
    /// How often a session beats: a tenth inside `heartbeat`, the longest silence the
    /// contract allows ("at least every 15 s"). Beating at exactly the period, the
    /// gaps a client measured were 15.00–15.01 s, a timer's lateness past the limit.
    pub fn beat_every(&self) -> Duration {
        self.heartbeat.mul_f64(0.9)
    }
}

/// Why a waiting session woke up (see [`Session::wake`]).
pub enum Wake {
    Timer,
    /// A message from the hub; `None` when the hub dropped the session.
    Hub(Option<HubMsg>),
    /// The user's binding was confirmed after the session opened.
    Bound,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Session {
    ctx: Arc<SessionCtx>,
    user: UserId,
    membership: Membership,
    last_sent: i64,
    pending: VecDeque<Event>,
    /// One timer for both the next heartbeat and the token's expiry, whichever comes
    /// first: every idle session holds it, and two would cost twice the memory.
    timer: Pin<Box<Sleep>>,
    token_expires: Instant,
    /// When the unread count last pushed, or a notification sent since, expires: the
    /// badge then counts something no longer counted, so the count is pushed again.
    recount_at: Option<Instant>,
    bound_confirmed: bool,
    ended: bool,
    transport: &'static str,
}

impl Session {
    /// Opens a session for `user`, resuming after `cursor` if given. `token_exp` is the
    /// token's `exp` (Unix seconds): the session ends with `token_expired` then.
    pub async fn open(
        ctx: Arc<SessionCtx>,
        user: UserId,
        cursor: Option<i64>,
        token_exp: i64,
        transport: &'static str,
    ) -> Result<Self, OpenError> {
        let membership = ctx.hub.join(&user, ctx.buffer)?;
        let bound_confirmed = membership.binding.is_bound()
            || tokio::time::timeout(BIND_WAIT, membership.binding.wait())
                .await
                .is_ok();
        let until_exp =
            Duration::from_millis(u64::try_from(token_exp * 1000 - now_ms()).unwrap_or(0));
        // The first beat at a random point of the period: sessions that connected
        // together (a deploy, a reconnect storm) are then written to no more often than
        // they will be from then on, and none waits longer than the period for its first.
        let first_beat = ctx.beat_every().mul_f64(rand::random::<f64>());
        let now = Instant::now();
        let token_expires = now + until_exp;
        let mut session = Session {
            timer: Box::pin(tokio::time::sleep_until(
                (now + first_beat).min(token_expires),
            )),
            token_expires,
            recount_at: None,
            ctx,
            user,
            membership,
            last_sent: 0,
            pending: VecDeque::new(),
            bound_confirmed,
            ended: false,
            transport,
        };
        if let Some(cursor) = cursor {
            session.last_sent = cursor;
            // A token already past its `exp` (accepted within the clock leeway) gets its
            // count and `token_expired`, never a replay: no session outlives its token.
            if !until_exp.is_zero() {
                session.catch_up().await?;
            }
        }
        let as_of = session.push_unread().await?;
        // Without a cursor nothing is replayed: the client reads its inbox, which `unread`
        // covers up to `as_of`. Live delivery and later catch-ups start after it, so they
        // never send what the inbox already shows (nor the whole history after a resync).
        if cursor.is_none() {
            session.last_sent = as_of;
        }
        metrics::gauge!(m::SESSIONS, "transport" => transport).increment(1.0);
        Ok(session)
    }

    /// The next event to write, or `None` when the session is over (client too slow,
    /// node shutting down, token expired, database lost during a catch-up).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queued() {
                return event;
            }
            let wake = match self.ready() {
                Some(wake) => wake,
                None => self.wake().await,
            };
            // The common case, written straight through rather than via the queue.
            if let Wake::Hub(Some(HubMsg::Notification(n))) = &wake
                && self.bound_confirmed
            {
                if let Some(event) = self.live(n) {
                    return Some(event);
                }
                continue;
            }
            self.act(wake).await;
        }
    }

    /// What the hub already queued, without waiting. A burst (broadcasts back to back)
    /// leaves several messages queued, and each then costs no select over the timer and
    /// the binding. Not once the timer is due: the select puts it first, so a steady
    /// stream cannot hold a token's expiry back.
    fn ready(&mut self) -> Option<Wake> {
        if self.timer.is_elapsed() {
            return None;
        }
        if !self.bound_confirmed && self.membership.binding.is_bound() {
            return Some(Wake::Bound);
        }
        self.membership
            .rx
            .try_recv()
            .ok()
            .map(|msg| Wake::Hub(Some(msg)))
    }

    /// A live notification, unless already sent (or skipped past) or expired.
    fn live(&mut self, n: &Arc<Note>) -> Option<Event> {
        if n.id <= self.last_sent || n.expires_at.is_some_and(|t| t <= now_ms()) {
            return None;
        }
        self.last_sent = n.id;
        if let Some(expires) = n.expires_at {
            self.recount_no_later_than(expires);
        }
        Some(Event::Notification(n.clone()))
    }

    /// Makes the next [`Event::Heartbeat`] come no later than `at` (the beats go on from
    /// there): the WebSocket transport drops a silent client on time this way, without
    /// a timer of its own on every connection.
    pub fn beat_no_later_than(&mut self, at: Instant) {
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
    }

    /// What is ready to write without waiting: `Some(Some(event))`, `Some(None)` when
    /// the session is over, `None` when nothing is.
    pub fn queued(&mut self) -> Option<Option<Event>> {
        let Some(event) = self.pending.pop_front() else {
            return self.ended.then_some(None);
        };
        if self.pending.is_empty() {
            // Idle sessions hold no queue buffer.
            self.pending = VecDeque::new();
        }
        if matches!(event, Event::TokenExpired) {
            self.ended = true;
        }
        Some(Some(event))
    }

    /// Waits until the session has something to do; [`Session::act`] does it. The wait
    /// is cancel-safe (dropping it loses nothing), so a transport can wait on its client
    /// at the same time; `act` is not, and must run to completion.
    ///
    /// Node shutdown arrives through the queue ([`HubMsg::Close`]) rather than as one
    /// more branch here: every idle session holds this future.
    pub async fn wake(&mut self) -> Wake {
        tokio::select! {
            biased;
            () = &mut self.timer => Wake::Timer,
            msg = self.membership.rx.recv_async() => Wake::Hub(msg.ok()),
            () = self.membership.binding.wait(), if !self.bound_confirmed => Wake::Bound,
        }
    }

    /// Acts on a wake: queues what it produces (see [`Session::queued`]) or ends the
    /// session.
    pub async fn act(&mut self, wake: Wake) {
        match wake {
            Wake::Timer => {
                let now = Instant::now();
                if now >= self.token_expires {
                    // Queued last, and it ends the session: the timer is not polled again.
                    self.pending.push_back(Event::TokenExpired);
                    return;
                }
                // A recount also beats: one more keep-alive is harmless, and the timer
                // need not remember when the next one was due.
                let next_beat = now + self.ctx.beat_every();
                self.timer.as_mut().reset(next_beat.min(self.token_expires));
                self.pending.push_back(Event::Heartbeat);
                if self.recount_at.is_some_and(|at| at <= now) {
                    self.recount_at = None;
                    if Box::pin(self.push_unread()).await.is_err() {
                        self.ended = true;
                    }
                }
                self.arm_timer();
            }
            Wake::Hub(None) => {
                tracing::info!(user = %self.user, transport = self.transport, "session closed: it stopped reading");
                self.ended = true;
            }
            Wake::Hub(Some(HubMsg::Close)) => self.ended = true,
            // Not yet bound (the broker confirmed nothing within BIND_WAIT): notifications
            // for this user went past the node until now, while broadcasts did not. So a
            // live one says only that there is news; the database says what, in order.
            // Sending it as is would move the cursor past the ones that went by.
            Wake::Hub(Some(HubMsg::Notification(n))) if !self.bound_confirmed => {
                if n.id > self.last_sent && Box::pin(self.resync()).await.is_err() {
                    self.ended = true;
                }
            }
            Wake::Hub(Some(HubMsg::Notification(n))) => {
                if let Some(event) = self.live(&n) {
                    self.pending.push_back(event);
                }
            }
            // Database reads are boxed: inline, their futures would make every idle
            // session's future several KiB.
            Wake::Hub(Some(HubMsg::ReadStateChanged)) => {
                if Box::pin(self.push_unread()).await.is_err() {
                    self.ended = true;
                }
            }
            Wake::Hub(Some(HubMsg::Resync)) => {
                if Box::pin(self.resync()).await.is_err() {
                    self.ended = true;
                }
            }
            Wake::Bound => {
                self.bound_confirmed = true;
                if Box::pin(self.resync()).await.is_err() {
                    self.ended = true;
                }
            }
        }
    }

    /// The newest notification id this session has sent (or skipped past after a reset).
    pub fn last_sent(&self) -> i64 {
        self.last_sent
    }

    pub fn user(&self) -> &UserId {
        &self.user
    }

    async fn resync(&mut self) -> Result<(), StoreError> {
        let before = self.last_sent;
        self.catch_up().await?;
        if self.last_sent != before {
            self.push_unread().await?;
        }
        Ok(())
    }

    /// Queues every visible notification after `last_sent`, or `reset` past the cap.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        let cap = self.ctx.replay_cap;
        let now = now_ms();
        let missed = inbox::replay(
            &self.ctx.db,
            &self.user,
            self.last_sent,
            cap as u64 + 1,
            now,
        )
        .await?;
        if missed.len() > cap {
            self.last_sent = self
                .last_sent
                .max(inbox::latest_id(&self.ctx.db, &self.user, now).await?);
            self.pending.push_back(Event::Reset {
                latest: self.last_sent,
            });
            tracing::info!(user = %self.user, cap, "resume gap larger than the replay cap: reset");
            return Ok(());
        }
        metrics::counter!(m::REPLAYED, "transport" => self.transport)
            .increment(missed.len() as u64);
        for n in &missed {
            self.pending.push_back(Event::from_notification(n));
        }
        if let Some(last) = missed.last() {
            self.last_sent = last.id;
        }
        Ok(())
    }

    /// Queues the user's unread count; returns its `as_of`.
    async fn push_unread(&mut self) -> Result<i64, StoreError> {
        let unread = inbox::unread(&self.ctx.db, &self.user, now_ms()).await?;
        let as_of = unread.as_of;
        // This count supersedes the last: only its own first expiry is due.
        self.recount_at = None;
        if let Some(expires) = unread.next_expiry {
            self.recount_no_later_than(expires);
        }
        self.pending.push_back(Event::Unread(unread));
        Ok(as_of)
    }

    /// Pushes the count again once `expires_ms` (Unix ms) has passed, if not before.
    fn recount_no_later_than(&mut self, expires_ms: i64) {
        // A millisecond past the expiry (counted as expired only when `> now` fails),
        // plus a random part of RECOUNT_SPREAD: a broadcast expires for every session
        // of the node at once, and 10,000 counts in the same instant would queue up on
        // the database.
        let wait = u64::try_from(expires_ms + 1 - now_ms()).unwrap_or(0);
        let at = Instant::now()
            + Duration::from_millis(wait)
            + RECOUNT_SPREAD.mul_f64(rand::random::<f64>());
        if self.recount_at.is_none_or(|due| at < due) {
            self.recount_at = Some(at);
            self.arm_timer();
        }
    }

    /// Brings the timer forward to the recount if that comes before the next beat.
    fn arm_timer(&mut self) {
        if let Some(at) = self.recount_at
            && at < self.timer.deadline()
        {
            self.timer.as_mut().reset(at.min(self.token_expires));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        metrics::gauge!(m::SESSIONS, "transport" => self.transport).decrement(1.0);
    }
}
