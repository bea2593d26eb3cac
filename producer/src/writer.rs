//! The database writer: one task that takes validated notifications from the API
//! handlers, commits them in batches (see `reddot_shared::store::write`) and wakes the
//! relay. Handlers await their own outcome, so a 201 is only sent after the commit.
//!
//! The relay's "these rows are published" deletes go through here too, into the next
//! batch: on SQLite a second writer in the same process would lose the single write lock
//! to this task's back-to-back transactions and let the outbox lag for seconds. They have
//! their own channel, read first: behind a full queue of requests they waited for seconds
//! under overload, and the relay, waiting for them, stopped publishing.

use std::sync::Arc;

use reddot_shared::store::{
    StoreError,
    write::{Outcome, WriteRequest, commit_batch},
};
use sea_orm::DatabaseConnection;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Requests committed together at most.
const MAX_BATCH: usize = 256;
/// Recipients committed together at most (one request may exceed it alone).
const MAX_BATCH_RECIPIENTS: usize = 50_000;
/// Relay deletes queued at most (the relay has a few batches in flight).
const PUBLISHED_QUEUE: usize = 16;

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
    relay_wake: Arc<Notify>,
}

pub fn writer(db: DatabaseConnection, relay_wake: Arc<Notify>) -> (Writer, WriterTask) {
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
            relay_wake,
        },
    )
}

impl WriterTask {
    /// Commits until every [`Writer`] is dropped and the queue is empty; on shutdown it
    /// still commits what was already queued, so accepted requests finish.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut requests: Vec<WriteRequest> = Vec::with_capacity(MAX_BATCH);
        let mut waiting: Vec<Done> = Vec::with_capacity(MAX_BATCH);
        let mut published: Vec<i64> = Vec::new();
        let mut published_waiting = Vec::new();
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
            let mut recipients = 0;
            let mut next = Some(first);
            loop {
                let job = match self.published.try_recv() {
                    Ok(job) => job,
                    Err(_) => match next.take() {
                        Some(job) => job,
                        None => break,
                    },
                };
                match job {
                    Job::Write(req, done) => {
                        recipients += req.notification.users.len();
                        requests.push(*req);
                        waiting.push(done);
                    }
                    Job::Published(ids, done) => {
                        published.extend(ids);
                        published_waiting.push(done);
                    }
                }
                if next.is_none() && requests.len() < MAX_BATCH && recipients < MAX_BATCH_RECIPIENTS
                {
                    next = self.rx.try_recv().ok();
                }
            }
            let started = std::time::Instant::now();
            let committed = commit_batch(&self.db, &requests, &published).await;
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
                        self.relay_wake.notify_one();
                    }
                    for (done, outcome) in waiting.drain(..).zip(outcomes) {
                        let _ = done.send(Ok(outcome));
                    }
                    for done in published_waiting.drain(..) {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, requests = requests.len(), "batch not committed");
                    for done in waiting.drain(..) {
                        let _ = done.send(Err(clone_error(&err)));
                    }
                    for done in published_waiting.drain(..) {
                        let _ = done.send(Err(clone_error(&err)));
                    }
                }
            }
            requests.clear();
            published.clear();
        }
    }
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
    use anyhow::anyhow;
    use reddot_shared::{
        db,
        domain::{Audience, Kind, UserId},
        store::write::NewNotification,
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

    /// Under overload the queue of requests is full; the relay's delete must still go
    /// into the next commit, or the relay stalls behind it (seconds of publish lag).
    #[tokio::test]
    async fn relay_deletes_overtake_a_full_queue_of_requests() -> anyhow::Result<()> {
        let file = std::env::temp_dir().join(format!(
            "reddot-writer-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let conn =
            sea_orm::Database::connect(format!("sqlite://{}?mode=rwc", file.display())).await?;
        db::migrate(&conn).await?;
        let (writer, task) = writer(conn, Arc::new(Notify::new()));
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
