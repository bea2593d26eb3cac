//! The database writer: one task that takes validated notifications from the API
//! handlers, commits them in batches (see `reddot_shared::store::write`) and wakes the
//! relay. Handlers await their own outcome, so a 201 is only sent after the commit.
//!
//! The relay's "these rows are published" deletes go through here too, into the next
//! batch: on SQLite a second writer in the same process would lose the single write lock
//! to this task's back-to-back transactions and let the outbox lag for seconds.

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

type Done = oneshot::Sender<Result<Outcome, StoreError>>;

enum Job {
    Write(Box<WriteRequest>, Done),
    Published(Vec<i64>, oneshot::Sender<Result<(), StoreError>>),
}

/// The handle API handlers use.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
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
        self.tx
            .send(Job::Published(ids, done))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        outcome.await.map_err(|_| StoreError::WriterGone)?
    }
}

pub struct WriterTask {
    db: DatabaseConnection,
    rx: mpsc::Receiver<Job>,
    relay_wake: Arc<Notify>,
}

pub fn writer(db: DatabaseConnection, relay_wake: Arc<Notify>) -> (Writer, WriterTask) {
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    (Writer { tx }, WriterTask { db, rx, relay_wake })
}

impl WriterTask {
    /// Commits until every [`Writer`] is dropped and the queue is empty; on shutdown it
    /// still commits what was already queued, so accepted requests finish.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut requests: Vec<WriteRequest> = Vec::with_capacity(MAX_BATCH);
        let mut waiting: Vec<Done> = Vec::with_capacity(MAX_BATCH);
        let mut published: Vec<i64> = Vec::new();
        let mut published_waiting = Vec::new();
        loop {
            let first = tokio::select! {
                job = self.rx.recv() => job,
                () = shutdown.cancelled() => { self.rx.close(); self.rx.recv().await }
            };
            let Some(first) = first else { return Ok(()) };
            let mut recipients = 0;
            let mut next = Some(first);
            while let Some(job) = next.take() {
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
                if requests.len() < MAX_BATCH && recipients < MAX_BATCH_RECIPIENTS {
                    next = self.rx.try_recv().ok();
                }
            }
            match commit_batch(&self.db, &requests, &published).await {
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
