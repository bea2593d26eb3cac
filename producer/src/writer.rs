//! The database writer: one task that takes validated notifications from the API
//! handlers, commits them in batches (see `reddot_shared::store::write`) and hands what
//! it committed to the relay (`crate::handoff`), waking it. Handlers await their own
//! outcome, so a 201 is only sent after the commit.
//!
//! The relay's "these rows are published" deletes go through here too, into the next
//! batch (a delete alone waits briefly for requests to share the commit): on SQLite a
//! second writer in the same process would lose the single write lock to this task's
//! back-to-back transactions and let the outbox lag for seconds. They have their own
//! channel, read first: behind a full queue of requests they waited for seconds under
//! overload, and the relay, waiting for them, stopped publishing.

use std::{sync::Arc, time::Duration};

use reddot_shared::{
    domain::Notification,
    store::{
        StoreError,
        outbox::Publishable,
        write::{Outcome, WriteRequest, commit_batch},
    },
};
use sea_orm::DatabaseConnection;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::handoff::Handoff;
use tokio_util::sync::CancellationToken;

/// Requests committed together at most.
const MAX_BATCH: usize = 256;
/// Recipients committed together at most (one request may exceed it alone).
const MAX_BATCH_RECIPIENTS: usize = 50_000;
/// Relay deletes queued at most (the relay has a few batches in flight).
const PUBLISHED_QUEUE: usize = 16;
/// How long deletes wait for requests to share their commit.
const DELETE_LINGER: Duration = Duration::from_millis(20);
/// How long one batch's transaction, or one relay read, may take. A database connection
/// that stalls without an error (a hung proxy, a half-open TCP connection) held every
/// request, and the outbox, for minutes; now they get 503 and the relay retries.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);

type Done = oneshot::Sender<Result<Outcome, StoreError>>;

enum Job {
    Write(Box<WriteRequest>, Done),
    Published(Vec<i64>, oneshot::Sender<Result<(), StoreError>>),
}

/// The handle API handlers use.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    published: mpsc::Sender<Job>,
}

impl Writer {
    /// Stores one request and waits for its commit.
    pub async fn write(&self, req: WriteRequest) -> Result<Outcome, StoreError> {
        let (done, outcome) = oneshot::channel();
        self.tx
            .send(Job::Write(Box::new(req), done))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        outcome.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Deletes confirmed outbox rows with the next batch.
    pub async fn mark_published(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        self.published
            .send(Job::Published(ids, done))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        outcome.await.map_err(|_| StoreError::WriterGone)?
    }
}

pub struct WriterTask {
    db: DatabaseConnection,
    rx: mpsc::Receiver<Job>,
    published: mpsc::Receiver<Job>,
    handoff: Arc<Handoff>,
    delete_linger: Duration,
}

pub fn writer(db: DatabaseConnection, handoff: Arc<Handoff>) -> (Writer, WriterTask) {
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    let (published_tx, published) = mpsc::channel(PUBLISHED_QUEUE);
    (
        Writer {
            tx,
            published: published_tx,
        },
        WriterTask {
            db,
            rx,
            published,
            handoff,
            delete_linger: DELETE_LINGER,
        },
    )
}

/// One commit's worth of jobs.
#[derive(Default)]
struct Batch {
    requests: Vec<WriteRequest>,
    waiting: Vec<Done>,
    recipients: usize,
    published: Vec<i64>,
    published_waiting: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

impl Batch {
    fn add(&mut self, job: Job) {
        match job {
            Job::Write(req, done) => {
                self.recipients += req.notification.users.len();
                self.requests.push(*req);
                self.waiting.push(done);
            }
            Job::Published(ids, done) => {
                self.published.extend(ids);
                self.published_waiting.push(done);
            }
        }
    }

    fn full(&self) -> bool {
        self.requests.len() >= MAX_BATCH || self.recipients >= MAX_BATCH_RECIPIENTS
    }
}

impl WriterTask {
    /// Commits until every [`Writer`] is dropped and the queue is empty; on shutdown it
    /// still commits what was already queued, so accepted requests finish.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut shutdown_seen = false;
        loop {
            let first = tokio::select! {
                biased;
                Some(job) = self.published.recv() => Some(job),
                job = self.rx.recv() => job,
                () = shutdown.cancelled(), if !shutdown_seen => {
                    self.rx.close();
                    self.published.close();
                    shutdown_seen = true;
                    continue;
                }
            };
            // Every sender is gone (or, after shutdown, both queues are drained: the
            // biased select took what was left of the deletes first).
            let Some(first) = first else { return Ok(()) };
            let mut batch = Batch::default();
            self.gather(first, &mut batch);
            if batch.requests.is_empty() && !shutdown_seen {
                // Deletes alone are no hurry: a commit of their own cost the writer
                // every other transaction under steady load (one per relay cycle), and
                // SQLite's single writer saturated at 1,000 notifications/s. They ride
                // with the next requests, or go alone once those are slow to come.
                let request = tokio::select! {
                    job = self.rx.recv() => job,
                    () = tokio::time::sleep(self.delete_linger) => None,
                    () = shutdown.cancelled() => None,
                };
                if let Some(job) = request {
                    self.gather(job, &mut batch);
                }
            }
            self.commit(batch).await;
        }
    }

    /// Adds `first` and whatever else is queued, deletes first, up to a batch's limits.
    fn gather(&mut self, first: Job, batch: &mut Batch) {
        let mut next = Some(first);
        loop {
            let job = match self.published.try_recv() {
                Ok(job) => job,
                Err(_) => match next.take() {
                    Some(job) => job,
                    None => break,
                },
            };
            batch.add(job);
            if next.is_none() && !batch.full() {
                next = self.rx.try_recv().ok();
            }
        }
    }

    async fn commit(&self, batch: Batch) {
        let Batch {
            requests,
            waiting,
            published,
            published_waiting,
            ..
        } = batch;
        let started = std::time::Instant::now();
        let committed = tokio::time::timeout(
            STATEMENT_TIMEOUT,
            commit_batch(&self.db, &requests, &published),
        )
        .await
        .unwrap_or(Err(StoreError::Timeout));
        tracing::debug!(
            requests = requests.len(),
            deletes = published.len(),
            ms = crate::relay::ms_since(started),
            ok = committed.is_ok(),
            "batch written"
        );
        match committed {
            Ok(outcomes) => {
                if !requests.is_empty() {
                    self.handoff.committed(publishable(requests, &outcomes));
                }
                for (done, outcome) in waiting.into_iter().zip(outcomes) {
                    let _ = done.send(Ok(outcome));
                }
                for done in published_waiting {
                    let _ = done.send(Ok(()));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, requests = requests.len(), "batch not committed");
                for done in waiting {
                    let _ = done.send(Err(clone_error(&err)));
                }
                for done in published_waiting {
                    let _ = done.send(Err(clone_error(&err)));
                }
            }
        }
    }
}

/// The notifications a commit created, as the relay publishes them (repeats of an
/// Idempotency-Key created nothing and are left out).
fn publishable(requests: Vec<WriteRequest>, outcomes: &[Outcome]) -> Vec<Publishable> {
    requests
        .into_iter()
        .zip(outcomes)
        .filter_map(|(req, outcome)| {
            let Outcome::Created(created) = outcome else {
                return None;
            };
            let n = req.notification;
            // Validated JSON; should it fail here, the relay reads the row instead.
            let data = RawValue::from_string(n.data).ok()?;
            let mut users: Vec<String> = n.users.iter().map(|u| u.as_str().to_owned()).collect();
            users.sort_unstable();
            Some((
                Notification {
                    id: created.id,
                    kind: n.kind.as_str().to_owned(),
                    title: n.title,
                    body: n.body,
                    data,
                    sender: n.sender,
                    audience: n.audience,
                    created_at: created.created_at,
                    expires_at: n.expires_at,
                },
                users,
            ))
        })
        .collect()
}

/// Every request of a failed batch gets the same answer: unavailable, or internal.
fn clone_error(err: &StoreError) -> StoreError {
    if err.is_unavailable() {
        StoreError::Timeout
    } else {
        StoreError::Corrupt(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use anyhow::anyhow;
    use reddot_shared::{
        db,
        domain::{Audience, Kind, UserId},
        store::{outbox, write::NewNotification},
    };

    use super::*;

    fn request() -> anyhow::Result<Box<WriteRequest>> {
        Ok(Box::new(WriteRequest {
            notification: NewNotification {
                kind: Kind::default(),
                title: "t".into(),
                body: String::new(),
                data: "{}".into(),
                sender: None,
                audience: Audience::User,
                users: vec![UserId::parse("u1")?],
                expires_at: None,
            },
            idempotency: None,
        }))
    }

    async fn sqlite() -> anyhow::Result<(DatabaseConnection, std::path::PathBuf)> {
        let file = std::env::temp_dir().join(format!(
            "reddot-writer-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let conn =
            sea_orm::Database::connect(format!("sqlite://{}?mode=rwc", file.display())).await?;
        db::migrate(&conn).await?;
        Ok((conn, file))
    }

    /// What the relay takes from the hand-off is what it would read from the database:
    /// the same JSON, the same sorted recipients; a repeat of an Idempotency-Key adds
    /// nothing.
    #[tokio::test]
    async fn the_relay_is_handed_exactly_what_the_database_holds() -> anyhow::Result<()> {
        let (conn, file) = sqlite().await?;
        let handoff = Arc::new(Handoff::default());
        handoff.set_leading(true);
        let (writer, task) = writer(conn.clone(), handoff.clone());
        let mut targeted = request()?;
        targeted.notification = NewNotification {
            kind: Kind::parse("comment")?,
            title: "New reply".into(),
            body: "bob replied: \u{4f60}\u{597d}".into(),
            data: r#"{"post_id":42,"tags":["a","b"]}"#.into(),
            sender: Some("bob".into()),
            audience: Audience::User,
            users: vec![UserId::parse("zoe")?, UserId::parse("al.ice@x")?],
            expires_at: Some(reddot_shared::time::now_ms() + 3_600_000),
        };
        let mut broadcast = request()?;
        broadcast.notification.audience = Audience::All;
        broadcast.notification.users.clear();
        let mut keyed = request()?;
        keyed.idempotency = Some(reddot_shared::store::write::IdempotencyClaim {
            scope: "s".into(),
            key: "k".into(),
            request_hash: "h".into(),
        });
        // Queued before the writer starts: one batch, the repeat inside it.
        let mut answers = Vec::new();
        for req in [targeted, broadcast, keyed.clone(), keyed] {
            let (done, answer) = oneshot::channel();
            writer
                .tx
                .try_send(Job::Write(req, done))
                .map_err(|_| anyhow!("request queue full"))?;
            answers.push(answer);
        }
        let running = tokio::spawn(task.run(CancellationToken::new()));
        for answer in answers {
            answer.await??;
        }

        let from_db = outbox::pending(&conn, 0, 100, reddot_shared::time::now_ms(), |_| {
            HashMap::new()
        })
        .await?;
        assert_eq!(from_db.items.len(), 3, "three notifications created");
        let handed = handoff.take(&from_db.ids);
        assert_eq!(handed.len(), 3);
        for (n, users) in &from_db.items {
            let (h, h_users) = handed
                .get(&n.id)
                .ok_or_else(|| anyhow!("{} not handed over", n.id))?;
            assert_eq!(h.to_json(), n.to_json());
            assert_eq!(h_users, users);
        }
        assert_eq!(from_db.items[0].1, ["al.ice@x", "zoe"]);

        drop(writer);
        running.await??;
        let _ = std::fs::remove_file(&file);
        Ok(())
    }

    /// A delete alone waits for requests to share their commit (one transaction, not
    /// two); at shutdown it goes at once.
    #[tokio::test]
    async fn a_delete_alone_waits_for_the_next_requests_commit() -> anyhow::Result<()> {
        let (conn, file) = sqlite().await?;
        let (writer, mut task) = writer(conn, Arc::new(Handoff::default()));
        // Longer than the test: only a request (or shutdown) can end the wait.
        task.delete_linger = Duration::from_secs(3600);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(task.run(shutdown.clone()));

        let deleting = tokio::spawn({
            let writer = writer.clone();
            async move { writer.mark_published(vec![1]).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!deleting.is_finished(), "the delete was committed alone");
        let outcome = writer.write(*request()?).await?;
        assert!(matches!(outcome, Outcome::Created(_)));
        tokio::time::timeout(Duration::from_secs(10), deleting).await???;

        let deleting = tokio::spawn({
            let writer = writer.clone();
            async move { writer.mark_published(vec![2]).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!deleting.is_finished(), "the delete was committed alone");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), deleting).await???;
        drop(writer);
        running.await??;
        let _ = std::fs::remove_file(&file);
        Ok(())
    }

    /// Under overload the queue of requests is full; the relay's delete must still go
    /// into the next commit, or the relay stalls behind it (seconds of publish lag).
    #[tokio::test]
    async fn relay_deletes_overtake_a_full_queue_of_requests() -> anyhow::Result<()> {
        let (conn, file) = sqlite().await?;
        let (writer, task) = writer(conn, Arc::new(Handoff::default()));
        // Three batches of requests, then a delete, all queued before the writer starts.
        let mut answers = Vec::new();
        for _ in 0..3 * MAX_BATCH {
            let (done, answer) = oneshot::channel();
            writer
                .tx
                .try_send(Job::Write(request()?, done))
                .map_err(|_| anyhow!("request queue full"))?;
            answers.push(answer);
        }
        let (done, deleted) = oneshot::channel();
        writer
            .published
            .try_send(Job::Published(vec![1], done))
            .map_err(|_| anyhow!("delete queue full"))?;
        let running = tokio::spawn(task.run(CancellationToken::new()));

        deleted.await??;
        // One thread: the writer is back at the database with its second batch.
        let early: Vec<_> = answers.iter_mut().map(|a| a.try_recv().ok()).collect();
        let answered = early.iter().flatten().count();
        assert!(
            answered <= MAX_BATCH,
            "the delete waited for {answered} requests"
        );

        drop(writer);
        for (answer, early) in answers.into_iter().zip(early) {
            let outcome = match early {
                Some(outcome) => outcome,
                None => answer.await?,
            };
            assert!(matches!(outcome, Ok(Outcome::Created(_))));
        }
        running.await??;
        let _ = std::fs::remove_file(&file);
        Ok(())
    }
}
