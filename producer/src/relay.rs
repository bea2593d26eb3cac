//! The outbox relay: the only code that publishes notifications. One relay at a time
//! across all producers holds the `outbox_relay` lease; it reads the outbox in id order
//! (taking the notifications its own writer just committed from `crate::handoff`, and
//! reading only the others back from the database), publishes each message persistent
//! on a confirm channel, and hands the batch to a
//! settling task that waits for every confirm and only then deletes the rows. Meanwhile
//! the relay reads and publishes the next batch (after the last id it published: commit
//! order is id order, so nothing can appear behind it): a notification waits for one
//! read and one publish, not for the confirms and the delete of the batch before it.
//! A failure anywhere starts again from the oldest row still in the outbox: gateways drop
//! ids they already sent, so a repeat is harmless and a gap is impossible.
//!
//! The lease is renewed by a task of its own, never on the publishing path: on SQLite a
//! renew is a write, and waits for the single write lock behind the writer's
//! back-to-back commits (up to 440 ms measured at 2,000 notifications/s), during which a
//! relay renewing inline published nothing. The relay publishes while the last
//! successful renew is recent enough (see [`LEASE_VALID_MS`]).
//!
//! With MQTT on, each notification also goes to `amq.topic`, once per recipient or once
//! for a broadcast, on the same channel, inside the same batch: a row is deleted only
//! once the gateways' and the MQTT copies are all confirmed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    task::Poll,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{StreamExt, stream::FuturesOrdered};
use reddot_shared::{
    amqp::{self, lapin},
    backoff::Backoff,
    metrics as m,
    store::{lease, outbox},
    time::now_ms,
};
use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::handoff::Handoff;

const LEASE: &str = "outbox_relay";
const LEASE_TTL_MS: i64 = 10_000;
/// Renew well inside the TTL, so a live leader never loses the lease to a GC-free pause.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How soon to try again after a renew failed (the database unreachable, say).
const RENEW_RETRY: Duration = Duration::from_millis(500);
/// How long after a successful renew began the relay still publishes as leader. The
/// lease runs `LEASE_TTL_MS` from then; the last 2 s are left for clock skew between
/// producers and for a batch already being published.
const LEASE_VALID_MS: i64 = LEASE_TTL_MS - 2_000;
const BATCH: u32 = 1024;
/// Messages handed to lapin and not yet written, at most.
const PUBLISH_WINDOW: usize = 1024;
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Published batches whose confirms and deletes are still to come, at most.
const BATCHES_IN_FLIGHT: usize = 4;
/// How long a stopping producer keeps publishing what is left in the outbox.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

pub struct Relay {
    pub db: DatabaseConnection,
    pub pool: deadpool_lapin::Pool,
    /// What the writer committed, and the wake-up that comes with it.
    pub handoff: Arc<Handoff>,
    pub poll: Duration,
    /// Whether the last publish attempt reached RabbitMQ (for `/readyz`).
    pub amqp_ok: Arc<AtomicBool>,
    pub holder: String,
    pub writer: crate::writer::Writer,
    /// `REDDOT_MQTT_PUBLISH`: also publish for RabbitMQ's MQTT plugin.
    pub mqtt: bool,
}

struct Link {
    conn: deadpool_lapin::Connection,
    channel: lapin::Channel,
}

impl Link {
    /// Closes the connection instead of handing it back to the pool: after a failed
    /// batch it may be half-open (still "connected" to the pool, which would hand it
    /// out again: every retry then timed out on a fresh channel of the dead connection).
    fn discard(link: &mut Option<Link>) {
        if let Some(Link { conn, .. }) = link.take() {
            let conn = deadpool_lapin::Object::take(conn);
            tokio::spawn(async move {
                let close = conn.close(200, "relay batch failed".into());
                let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
            });
        }
    }
}

/// A published batch: its rows are deleted once every confirm is in.
struct InFlight {
    /// Which run of the relay published it: see [`Settler::failed`].
    generation: u64,
    ids: Vec<i64>,
    /// Notifications published (rows of expired ones are only deleted).
    published: usize,
    created_at: Vec<i64>,
    confirms: Vec<lapin::PublisherConfirm>,
}

/// The settling task's side: confirms, deletes, and the publish-lag metric.
struct Settler {
    db: DatabaseConnection,
    writer: crate::writer::Writer,
    /// One more than the newest generation a batch of which failed (0: none did). The
    /// relay starts over from the oldest outbox row when it passes its own generation;
    /// failures of batches from before that restart change nothing.
    failed: Arc<AtomicU64>,
}

/// Takes and renews the relay lease, and tells the relay until when it may publish.
struct LeaseKeeper {
    db: DatabaseConnection,
    holder: String,
    until: Arc<AtomicI64>,
    /// Told of leadership changes; woken when this relay becomes leader, so that it
    /// starts without waiting.
    handoff: Arc<Handoff>,
}

impl LeaseKeeper {
    /// Renews until `stop`; a renew in progress is finished first, so none can follow
    /// the relay's release of the lease.
    async fn run(self, stop: CancellationToken) {
        let mut leader = false;
        while !stop.is_cancelled() {
            let started = now_ms();
            let renewed =
                lease::acquire(&self.db, LEASE, &self.holder, started, LEASE_TTL_MS).await;
            let now_leader = match renewed {
                Ok(now_leader) => now_leader,
                Err(ref err) => {
                    tracing::warn!(error = %err, "could not renew the relay lease");
                    false
                }
            };
            self.until.store(
                if now_leader {
                    started + LEASE_VALID_MS
                } else {
                    0
                },
                Ordering::Release,
            );
            if now_leader != leader {
                tracing::info!(holder = %self.holder, leader = now_leader, "outbox relay leadership changed");
                self.handoff.set_leading(now_leader);
                if now_leader {
                    self.handoff.wake.notify_one();
                }
                leader = now_leader;
            }
            metrics::gauge!(m::RELAY_LEADER).set(if leader { 1.0 } else { 0.0 });
            let next = if renewed.is_ok() {
                RENEW_EVERY
            } else {
                RENEW_RETRY
            };
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = stop.cancelled() => {}
            }
        }
    }
}

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut link: Option<Link> = None;
        // Until when (Unix ms) this relay may publish as leader; 0: not leader.
        let leader_until = Arc::new(AtomicI64::new(0));
        let keeper_stop = CancellationToken::new();
        // However the relay ends (an error included), its lease stops being renewed, so
        // another producer can take over once it expires.
        let _stop_keeper = keeper_stop.clone().drop_guard();
        let keeper = tokio::spawn(
            LeaseKeeper {
                db: self.db.clone(),
                holder: self.holder.clone(),
                until: leader_until.clone(),
                handoff: self.handoff.clone(),
            }
            .run(keeper_stop.clone()),
        );
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut flush_until: Option<Instant> = None;
        // The last id handed to the broker in this generation; the next read starts after
        // it. Every restart (a failure, a lost lease) bumps the generation and reads from
        // the oldest row again.
        let mut cursor = 0;
        let mut generation = 0;
        let failed = Arc::new(AtomicU64::new(0));
        let (to_settle, settling) = mpsc::channel(BATCHES_IN_FLIGHT);
        let settler = tokio::spawn(
            Settler {
                db: self.db.clone(),
                writer: self.writer.clone(),
                failed: failed.clone(),
            }
            .run(settling),
        );

        loop {
            if flush_until.is_none() && shutdown.is_cancelled() {
                flush_until = Some(Instant::now() + FLUSH_DEADLINE);
            }
            if flush_until.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            if now_ms() >= leader_until.load(Ordering::Acquire) {
                if flush_until.is_some() {
                    break;
                }
                (cursor, generation) = (0, generation + 1);
                self.idle(&shutdown, self.poll.max(Duration::from_millis(500)))
                    .await;
                continue;
            }
            let failed_generation = failed.load(Ordering::Acquire);
            if failed_generation > generation {
                // A batch was not confirmed or its rows not deleted: publish again from
                // the oldest row left, on a fresh connection.
                self.amqp_ok.store(false, Ordering::Relaxed);
                Link::discard(&mut link);
                (cursor, generation) = (0, failed_generation);
                if flush_until.is_some() {
                    break;
                }
                self.back_off(&shutdown, backoff.next_delay()).await;
                continue;
            }

            let read_started = Instant::now();
            let read = outbox::pending(&self.db, cursor, BATCH, now_ms(), |ids| {
                self.handoff.take(ids)
            });
            let pending = match tokio::time::timeout(crate::writer::STATEMENT_TIMEOUT, read)
                .await
                .unwrap_or(Err(reddot_shared::store::StoreError::Timeout))
            {
                Ok(p) => p,
                Err(err) => {
                    tracing::warn!(error = %err, "could not read the outbox");
                    self.back_off(&shutdown, backoff.next_delay()).await;
                    continue;
                }
            };
            let Some(&last) = pending.ids.last() else {
                if flush_until.is_some() {
                    break;
                }
                // Connect while idle, so the first notification does not pay the handshake.
                if link.is_none() {
                    match self.connect().await {
                        Ok(l) => link = Some(l),
                        Err(err) => {
                            tracing::debug!(error = %format!("{err:#}"), "RabbitMQ not reachable yet")
                        }
                    }
                }
                self.idle(&shutdown, self.poll).await;
                continue;
            };
            let read_ms = ms_since(read_started);
            let publish_started = Instant::now();
            match self.publish(&mut link, &pending.items).await {
                Ok(confirms) => {
                    self.amqp_ok.store(true, Ordering::Relaxed);
                    backoff.reset();
                    cursor = last;
                    let (count, publish_ms) = (pending.items.len(), ms_since(publish_started));
                    let batch = InFlight {
                        generation,
                        ids: pending.ids,
                        published: pending.items.len(),
                        created_at: pending.created_at,
                        confirms,
                    };
                    // Waits while BATCHES_IN_FLIGHT batches are unconfirmed.
                    let handed = Instant::now();
                    if to_settle.send(batch).await.is_err() {
                        anyhow::bail!("the relay's settling task stopped");
                    }
                    // Where a slow relay spends its time (the stall that was Nagle's
                    // algorithm on the database connection showed up in `settle_wait_ms`).
                    tracing::debug!(
                        count,
                        last,
                        read_ms,
                        publish_ms,
                        settle_wait_ms = ms_since(handed),
                        "published"
                    );
                }
                Err(err) => {
                    self.amqp_ok.store(false, Ordering::Relaxed);
                    Link::discard(&mut link);
                    (cursor, generation) = (0, generation + 1);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64, "publish failed; will retry");
                    if flush_until.is_some() {
                        break;
                    }
                    self.back_off(&shutdown, delay).await;
                }
            }
        }
        // What was published is confirmed and deleted before the lease goes; the keeper
        // stops first, so that no renew can follow the release.
        drop(to_settle);
        settler.await.context("the relay's settling task")?;
        keeper_stop.cancel();
        keeper.await.context("the relay's lease keeper")?;
        let leader = now_ms() < leader_until.load(Ordering::Acquire);
        if leader && let Err(err) = lease::release(&self.db, LEASE, &self.holder).await {
            tracing::warn!(error = %err, "could not release the relay lease");
        }
        match outbox::lag(&self.db).await {
            Ok(0) => tracing::info!("outbox relay stopped; outbox empty"),
            Ok(left) => tracing::warn!(
                left,
                "outbox relay stopped; the next relay publishes the rest"
            ),
            Err(_) => {}
        }
        Ok(())
    }

    /// Waits for a wake-up, the delay, or shutdown.
    async fn idle(&self, shutdown: &CancellationToken, delay: Duration) {
        tokio::select! {
            () = self.handoff.wake.notified() => {}
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => {}
        }
    }

    /// Waits out a backoff after a failure: the delay or shutdown, not a wake-up. With
    /// wake-ups, every commit during a RabbitMQ outage cut the backoff short: one
    /// connection attempt and one warning per write batch.
    async fn back_off(&self, shutdown: &CancellationToken, delay: Duration) {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => {}
        }
    }

    /// Hands every message of a batch to the broker, in id order; returns their
    /// confirms, still to come.
    async fn publish(
        &self,
        link: &mut Option<Link>,
        items: &[(reddot_shared::domain::Notification, Vec<String>)],
    ) -> anyhow::Result<Vec<lapin::PublisherConfirm>> {
        if link
            .as_ref()
            .is_none_or(|l| !l.channel.status().connected())
        {
            *link = Some(self.connect().await?);
        }
        let Some(Link { channel, .. }) = link.as_ref() else {
            anyhow::bail!("no channel")
        };
        // `basic_publish` resolves once lapin's I/O loop has written the frames: awaited
        // one by one, every message waits for a round through that loop and a batch of
        // 1,000 took 100-200 ms on a busy node. Its first poll queues the frames (and
        // takes the delivery tag), so each message is polled once before the next is
        // made: the broker still gets them in id order, and the writes overlap.
        let mut written = FuturesOrdered::new();
        let mut confirms = Vec::new();
        let now = now_ms();
        for (notification, users) in items {
            let mut messages = amqp::encode_notification(notification, users);
            if self.mqtt {
                messages.extend(amqp::encode_mqtt(notification, users, now));
            }
            for msg in messages {
                let mut publish = Box::pin(async move {
                    channel
                        .basic_publish(
                            msg.exchange.into(),
                            msg.routing_key.as_str().into(),
                            lapin::options::BasicPublishOptions::default(),
                            &msg.payload,
                            msg.properties,
                        )
                        .await
                });
                match futures_util::poll!(publish.as_mut()) {
                    Poll::Ready(confirm) => confirms.push(confirm.context("basic.publish")?),
                    Poll::Pending => written.push_back(publish),
                }
                if written.len() >= PUBLISH_WINDOW
                    && let Some(confirm) = written.next().await
                {
                    confirms.push(confirm.context("basic.publish")?);
                }
            }
        }
        while let Some(confirm) = written.next().await {
            confirms.push(confirm.context("basic.publish")?);
        }
        Ok(confirms)
    }

    async fn connect(&self) -> anyhow::Result<Link> {
        let conn = tokio::time::timeout(Duration::from_secs(5), self.pool.get())
            .await
            .context("connecting to RabbitMQ timed out")?
            .context("connecting to RabbitMQ")?;
        let channel = conn.create_channel().await.context("opening a channel")?;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
        amqp::declare_exchanges(&channel)
            .await
            .context("declaring exchanges")?;
        amqp::remove_old_mqtt_route(&channel)
            .await
            .context("removing the old broadcast route to amq.topic")?;
        tracing::info!(mqtt = self.mqtt, "relay connected to RabbitMQ");
        Ok(Link { conn, channel })
    }
}

impl Settler {
    /// Settles batches in the order they were published until the relay stops. Batches
    /// published while the last ones were settling are settled together: their rows go
    /// in one delete, so a busy writer gets fewer, larger deletes rather than falling
    /// further behind.
    async fn run(self, mut batches: mpsc::Receiver<InFlight>) {
        while let Some(first) = batches.recv().await {
            let mut group = vec![first];
            while let Ok(batch) = batches.try_recv() {
                group.push(batch);
            }
            self.settle(group).await;
        }
    }

    async fn settle(&self, group: Vec<InFlight>) {
        let started = Instant::now();
        let batches = group.len();
        let mut confirmed = Vec::new();
        let mut newest_generation = 0;
        for batch in group {
            let generation = batch.generation;
            match confirm(batch).await {
                Ok(ids) => {
                    confirmed.extend(ids);
                    newest_generation = newest_generation.max(generation);
                }
                Err(err) => self.fail(generation, &err),
            }
        }
        if confirmed.is_empty() {
            return;
        }
        let confirm_ms = ms_since(started);
        let deleting = Instant::now();
        match self.mark_published(&confirmed).await {
            Ok(()) => tracing::debug!(
                batches,
                rows = confirmed.len(),
                confirm_ms,
                delete_ms = ms_since(deleting),
                "settled"
            ),
            Err(err) => self.fail(
                newest_generation,
                &anyhow::Error::new(err).context("deleting published rows"),
            ),
        }
    }

    fn fail(&self, generation: u64, err: &anyhow::Error) {
        tracing::warn!(error = %format!("{err:#}"), "a published batch did not settle; publishing again from the oldest row");
        self.failed.fetch_max(generation + 1, Ordering::AcqRel);
    }

    /// Deletes confirmed rows through the writer (see `crate::writer`), or directly once
    /// the writer has stopped (the final flush at shutdown).
    async fn mark_published(&self, ids: &[i64]) -> Result<(), reddot_shared::store::StoreError> {
        match self.writer.mark_published(ids.to_vec()).await {
            Err(reddot_shared::store::StoreError::WriterGone) => {
                outbox::mark_published(&self.db, ids).await
            }
            other => other,
        }
    }
}

/// Waits for every confirm of a batch; returns its rows, to delete.
async fn confirm(batch: InFlight) -> anyhow::Result<Vec<i64>> {
    for confirm in batch.confirms {
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .context("publisher confirm timed out")?
            .context("publisher confirm")?;
        if confirmation.is_nack() {
            anyhow::bail!("the broker refused (nack) a message");
        }
    }
    let now = now_ms();
    for created in &batch.created_at {
        metrics::histogram!(m::PUBLISH_LAG).record((now - created).max(0) as f64 / 1000.0);
    }
    metrics::counter!(m::OUTBOX_PUBLISHED).increment(batch.published as u64);
    Ok(batch.ids)
}

/// Milliseconds since `t`, for the debug timings.
pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
