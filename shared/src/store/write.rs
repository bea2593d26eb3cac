//! Writing notifications. One transaction per batch of API requests: the PostgreSQL
//! advisory lock (SQLite: its single writer, `BEGIN IMMEDIATE`) serializes every insert
//! so that commit order equals id order, which is what makes resume by `id > cursor`
//! gap-free. Batching many requests into one transaction pays that serialization and the
//! commit's fsync once per batch instead of once per request.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, SqliteTransactionMode, TransactionOptions,
    TransactionTrait, Value,
};
use serde::Serialize;

use super::{MAX_PARAMS, StoreError, is_postgres, placeholders, stmt};
use crate::{
    domain::{Audience, Kind, UserId},
    time::{now_ms, rfc3339},
};

/// Advisory lock key that serializes notification inserts across producers (PostgreSQL).
pub const INSERT_LOCK: i64 = 0x7265_6464_6f74_0002;

/// How long a stored Idempotency-Key answers repeats.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// A validated notification to store.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub kind: Kind,
    pub title: String,
    pub body: String,
    /// The `data` object as JSON text.
    pub data: String,
    pub sender: Option<String>,
    pub audience: Audience,
    /// Distinct recipients; empty for a broadcast.
    pub users: Vec<UserId>,
    pub expires_at: Option<i64>,
}

/// An `Idempotency-Key` to honour: `scope` is a hash of the API key that sent it.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub scope: String,
    pub key: String,
    /// Hash of the request body: the same key with another body is refused.
    pub request_hash: String,
}

#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub notification: NewNotification,
    pub idempotency: Option<IdempotencyClaim>,
}

/// The 201 answer for a stored notification.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub id: i64,
    #[serde(serialize_with = "ser_ms")]
    pub created_at: i64,
    pub audience: Audience,
    pub recipients: Option<i64>,
}

fn ser_ms<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Created(Created),
    /// A repeat of an earlier request with the same Idempotency-Key: its first answer.
    Replay {
        status: u16,
        body: String,
    },
    /// The same Idempotency-Key with a different body.
    KeyReused,
}

/// Stores a batch in one transaction; outcomes are in request order.
/// Also deletes the outbox rows in `published` (confirmed by the broker) in the same
/// transaction.
pub async fn commit_batch(
    db: &DatabaseConnection,
    batch: &[WriteRequest],
    published: &[i64],
) -> Result<Vec<Outcome>, StoreError> {
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    if is_postgres(&txn) {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({INSERT_LOCK})"))
            .await?;
    }
    let now = now_ms();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut recipient_rows: Vec<[Value; 6]> = Vec::new();
    let mut outbox_rows: Vec<[Value; 2]> = Vec::new();

    for req in batch {
        if let Some(claim) = &req.idempotency
            && let Some(earlier) = find_idempotent(&txn, claim, now).await?
        {
            outcomes.push(earlier);
            continue;
        }
        let n = &req.notification;
        let recipients = (n.audience == Audience::User).then_some(n.users.len() as i64);
        let row = txn
            .query_one_raw(stmt(
                &txn,
                "INSERT INTO notifications (kind, title, body, data, sender, audience, recipients, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                [
                    n.kind.as_str().into(),
                    n.title.clone().into(),
                    n.body.clone().into(),
                    n.data.clone().into(),
                    n.sender.clone().into(),
                    n.audience.as_str().into(),
                    recipients.into(),
                    now.into(),
                    n.expires_at.into(),
                ],
            ))
            .await?
            .ok_or_else(|| StoreError::Corrupt("insert returned no id".into()))?;
        let id: i64 = row.try_get("", "id")?;
        for user in &n.users {
            recipient_rows.push([
                user.as_str().into(),
                id.into(),
                0i16.into(),
                n.kind.as_str().into(),
                n.expires_at.into(),
                super::state::UNREAD.into(),
            ]);
        }
        outbox_rows.push([id.into(), now.into()]);
        let created = Created {
            id,
            created_at: now,
            audience: n.audience,
            recipients,
        };
        if let Some(claim) = &req.idempotency {
            remember_idempotent(&txn, claim, &created, now).await?;
        }
        outcomes.push(Outcome::Created(created));
    }

    insert_rows(
        &txn,
        "recipients (user_id, notification_id, broadcast, kind, expires_at, state)",
        recipient_rows,
    )
    .await?;
    insert_rows(&txn, "outbox (notification_id, created_at)", outbox_rows).await?;
    for chunk in published.chunks(1000) {
        super::outbox::mark_published(&txn, chunk).await?;
    }
    txn.commit().await?;
    Ok(outcomes)
}

/// Multi-row `INSERT`, chunked under the bound-parameter limit.
async fn insert_rows<const N: usize>(
    txn: &impl ConnectionTrait,
    table_and_columns: &str,
    rows: Vec<[Value; N]>,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(MAX_PARAMS / N) {
        let sql = format!(
            "INSERT INTO {table_and_columns} VALUES {}",
            placeholders(txn.get_database_backend(), chunk.len(), N)
        );
        let values = chunk.iter().flat_map(|r| r.iter().cloned());
        txn.execute_raw(stmt(txn, &sql, values)).await?;
    }
    Ok(())
}

async fn find_idempotent(
    txn: &impl ConnectionTrait,
    claim: &IdempotencyClaim,
    now: i64,
) -> Result<Option<Outcome>, StoreError> {
    let row = txn
        .query_one_raw(stmt(
            txn,
            "SELECT request_hash, status, response FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at > $3",
            [claim.scope.clone().into(), claim.key.clone().into(), (now - IDEMPOTENCY_WINDOW_MS).into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let hash: String = row.try_get("", "request_hash")?;
    if hash != claim.request_hash {
        return Ok(Some(Outcome::KeyReused));
    }
    let status: i16 = row.try_get("", "status")?;
    let body: String = row.try_get("", "response")?;
    Ok(Some(Outcome::Replay {
        status: u16::try_from(status).unwrap_or(201),
        body,
    }))
}

async fn remember_idempotent(
    txn: &impl ConnectionTrait,
    claim: &IdempotencyClaim,
    created: &Created,
    now: i64,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(created).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // An expired row with the same key is replaced: the 24 h window has passed.
    txn.execute_raw(stmt(
        txn,
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, response, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash, status = excluded.status, \
         response = excluded.response, created_at = excluded.created_at",
        [
            claim.scope.clone().into(),
            claim.key.clone().into(),
            claim.request_hash.clone().into(),
            201i16.into(),
            body.into(),
            now.into(),
        ],
    ))
    .await?;
    Ok(())
}
