//! Writing notifications. One transaction per batch of API requests: the PostgreSQL
//! advisory lock (SQLite: its single writer, `BEGIN IMMEDIATE`) serializes every insert
//! so that commit order equals id order, which is what makes resume by `id > cursor`
//! gap-free. Batching many requests into one transaction pays that serialization and the
//! commit's fsync once per batch instead of once per request.

use std::collections::HashMap;

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

/// What a request of a batch turns into, before its notification is written.
enum Settled {
    New,
    Done(Outcome),
    /// A repeat, within the batch, of the request at this index.
    SameAs(usize),
}

/// Stores a batch in one transaction; outcomes are in request order.
/// Also deletes the outbox rows in `published` (confirmed by the broker) in the same
/// transaction.
pub async fn commit_batch(
    db: &DatabaseConnection,
    batch: &[WriteRequest],
    published: &[i64],
) -> Result<Vec<Outcome>, StoreError> {
    let now = now_ms();
    if is_postgres(db) && batch.iter().all(|r| r.idempotency.is_none()) {
        // The common case on PostgreSQL: nothing to look up first, so the lock, the ids
        // and every row go in one statement that is its own transaction — one round
        // trip instead of five (BEGIN, lock, ids, rows, COMMIT) while holding the lock.
        let mut settled: Vec<Settled> = batch.iter().map(|_| Settled::New).collect();
        write_postgres(db, batch, &mut settled, published, now).await?;
        return outcomes(settled);
    }

    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    if is_postgres(&txn) {
        // Taken before the Idempotency-Keys are looked up, so that two producers
        // handling the same key one after the other see each other's claim.
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({INSERT_LOCK})"))
            .await?;
    }

    // Settle every Idempotency-Key first (also against earlier requests of this batch),
    // so that the ids of the new notifications can be taken in one go.
    let mut settled: Vec<Settled> = Vec::with_capacity(batch.len());
    let mut claimed_here: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, req) in batch.iter().enumerate() {
        let Some(claim) = &req.idempotency else {
            settled.push(Settled::New);
            continue;
        };
        let scoped_key = (claim.scope.as_str(), claim.key.as_str());
        settled.push(match claimed_here.get(&scoped_key) {
            Some(&first) => {
                let same_body = batch[first]
                    .idempotency
                    .as_ref()
                    .is_some_and(|c| c.request_hash == claim.request_hash);
                if same_body {
                    Settled::SameAs(first)
                } else {
                    Settled::Done(Outcome::KeyReused)
                }
            }
            None => match find_idempotent(&txn, claim, now).await? {
                Some(earlier) => Settled::Done(earlier),
                None => {
                    claimed_here.insert(scoped_key, i);
                    Settled::New
                }
            },
        });
    }

    if is_postgres(&txn) {
        write_postgres(&txn, batch, &mut settled, published, now).await?;
    } else {
        write_sqlite(&txn, batch, &mut settled, published, now).await?;
    }
    for (req, slot) in batch.iter().zip(&settled) {
        if let (Some(claim), Settled::Done(Outcome::Created(created))) = (&req.idempotency, slot) {
            remember_idempotent(&txn, claim, created, now).await?;
        }
    }
    txn.commit().await?;
    outcomes(settled)
}

/// The answers in request order, once every new notification is written.
fn outcomes(settled: Vec<Settled>) -> Result<Vec<Outcome>, StoreError> {
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(settled.len());
    for s in settled {
        outcomes.push(match s {
            Settled::Done(outcome) => outcome,
            Settled::SameAs(first) => match &outcomes[first] {
                Outcome::Created(created) => Outcome::Replay {
                    status: 201,
                    body: serde_json::to_string(created)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                },
                earlier => earlier.clone(),
            },
            Settled::New => return Err(StoreError::Corrupt("request left unwritten".into())),
        });
    }
    Ok(outcomes)
}

/// How many requests of the batch still need their notification written.
fn count_new(settled: &[Settled]) -> usize {
    settled.iter().filter(|s| matches!(s, Settled::New)).count()
}

/// The rows of the batch's new notifications, numbered by `ids`, each `Settled::New`
/// turned into its `Created` answer.
struct Rows<'a> {
    notifications: Vec<NewRow<'a>>,
    recipients: Vec<NewRecipient<'a>>,
}

fn rows<'a>(
    batch: &'a [WriteRequest],
    settled: &mut [Settled],
    mut ids: impl Iterator<Item = i64>,
    now: i64,
) -> Result<Rows<'a>, StoreError> {
    let mut rows = Rows {
        notifications: Vec::with_capacity(batch.len()),
        recipients: Vec::new(),
    };
    for (req, slot) in batch.iter().zip(settled.iter_mut()) {
        if !matches!(slot, Settled::New) {
            continue;
        }
        let id = ids
            .next()
            .ok_or_else(|| StoreError::Corrupt("fewer ids allocated than asked".into()))?;
        let n = &req.notification;
        let recipients = (n.audience == Audience::User).then_some(n.users.len() as i64);
        rows.notifications.push(NewRow {
            id,
            kind: n.kind.as_str(),
            title: &n.title,
            body: &n.body,
            data: &n.data,
            sender: n.sender.as_deref(),
            audience: n.audience.as_str(),
            recipients,
            created_at: now,
            expires_at: n.expires_at,
        });
        rows.recipients
            .extend(n.users.iter().map(|user| NewRecipient {
                user_id: user.as_str(),
                notification_id: id,
                kind: n.kind.as_str(),
                expires_at: n.expires_at,
            }));
        *slot = Settled::Done(Outcome::Created(Created {
            id,
            created_at: now,
            audience: n.audience,
            recipients,
        }));
    }
    Ok(rows)
}

/// SQLite: the IMMEDIATE transaction already holds the single write lock, so the ids
/// are read off `sqlite_sequence` and the rows inserted with them.
async fn write_sqlite(
    txn: &impl ConnectionTrait,
    batch: &[WriteRequest],
    settled: &mut [Settled],
    published: &[i64],
    now: i64,
) -> Result<(), StoreError> {
    let new = count_new(settled);
    let ids = allocate_ids_sqlite(txn, new).await?;
    let rows = rows(batch, settled, ids, now)?;
    insert_rows(
        txn,
        "notifications (id, kind, title, body, data, sender, audience, recipients, created_at, expires_at)",
        rows.notifications.iter().map(NewRow::values).collect(),
    )
    .await?;
    insert_rows(
        txn,
        "recipients (user_id, notification_id, broadcast, kind, expires_at, state)",
        rows.recipients.iter().map(NewRecipient::values).collect(),
    )
    .await?;
    insert_rows(
        txn,
        "outbox (notification_id, created_at)",
        rows.notifications
            .iter()
            .map(|n| [n.id.into(), n.created_at.into()])
            .collect(),
    )
    .await?;
    for chunk in published.chunks(1000) {
        super::outbox::mark_published(txn, chunk).await?;
    }
    Ok(())
}

/// The next `n` notification ids. AUTOINCREMENT keeps the highest id ever used in
/// sqlite_sequence (never reused, even after the clean-up deleted that row); inserting
/// explicit ids above it advances it.
async fn allocate_ids_sqlite(
    txn: &impl ConnectionTrait,
    n: usize,
) -> Result<std::ops::Range<i64>, StoreError> {
    if n == 0 {
        // A batch of the relay's deletes only: no ids to read.
        return Ok(0..0);
    }
    let count = i64::try_from(n).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let row = txn
        .query_one_raw(stmt(
            txn,
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'notifications'), 0) AS last",
            [],
        ))
        .await?
        .ok_or_else(|| StoreError::Corrupt("no sqlite_sequence answer".into()))?;
    let last: i64 = row.try_get("", "last")?;
    Ok(last + 1..last + 1 + count)
}

/// A `notifications` row to insert.
#[derive(Serialize)]
struct NewRow<'a> {
    id: i64,
    kind: &'a str,
    title: &'a str,
    body: &'a str,
    data: &'a str,
    sender: Option<&'a str>,
    audience: &'a str,
    recipients: Option<i64>,
    created_at: i64,
    expires_at: Option<i64>,
}

impl NewRow<'_> {
    fn values(&self) -> [Value; 10] {
        [
            self.id.into(),
            self.kind.into(),
            self.title.into(),
            self.body.into(),
            self.data.into(),
            self.sender.into(),
            self.audience.into(),
            self.recipients.into(),
            self.created_at.into(),
            self.expires_at.into(),
        ]
    }
}

/// An unread `recipients` row of a targeted notification.
#[derive(Serialize)]
struct NewRecipient<'a> {
    user_id: &'a str,
    notification_id: i64,
    kind: &'a str,
    expires_at: Option<i64>,
}

impl NewRecipient<'_> {
    fn values(&self) -> [Value; 6] {
        [
            self.user_id.into(),
            self.notification_id.into(),
            0i16.into(),
            self.kind.into(),
            self.expires_at.into(),
            super::state::UNREAD.into(),
        ]
    }
}

/// PostgreSQL: the whole batch — the insert lock, the ids, notifications, recipients,
/// outbox rows, and deleting the rows the relay published — in one statement of fixed
/// text, the rows passed as JSON and numbered 1…n in place of their ids. A multi-row
/// `VALUES` list would be a new statement text (parse, plan) per batch size.
///
/// The ids are taken after the lock (a row of `ids` needs the row of `lock`), so no
/// other producer commits a higher id before this one: commit order stays id order.
/// Run outside a transaction the statement is its own; inside one, the lock is already
/// held and taking it again is free.
async fn write_postgres(
    db: &impl ConnectionTrait,
    batch: &[WriteRequest],
    settled: &mut [Settled],
    published: &[i64],
    now: i64,
) -> Result<(), StoreError> {
    let new = count_new(settled);
    let count = i64::try_from(new).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let rows = rows(batch, settled, 1..=count, now)?;
    let sql = format!(
        "WITH lock AS MATERIALIZED (SELECT pg_advisory_xact_lock({INSERT_LOCK})), \
         taken AS MATERIALIZED (\
           SELECT nextval(pg_get_serial_sequence('notifications', 'id')) AS id \
           FROM lock, generate_series(1, $4::bigint)), \
         ids AS MATERIALIZED (SELECT id, row_number() OVER (ORDER BY id) AS ord FROM taken), \
         n AS (\
           INSERT INTO notifications (id, kind, title, body, data, sender, audience, recipients, created_at, expires_at) \
           SELECT ids.id, kind, title, body, data, sender, audience, recipients, created_at, expires_at \
           FROM jsonb_to_recordset($1::jsonb) AS x(id bigint, kind text, title text, body text, data text, \
             sender text, audience text, recipients bigint, created_at bigint, expires_at bigint) \
           JOIN ids ON ids.ord = x.id), \
         r AS (\
           INSERT INTO recipients (user_id, notification_id, broadcast, kind, expires_at, state) \
           SELECT user_id, ids.id, 0, kind, expires_at, {unread} \
           FROM jsonb_to_recordset($2::jsonb) AS x(user_id text, notification_id bigint, kind text, expires_at bigint) \
           JOIN ids ON ids.ord = x.notification_id), \
         o AS (\
           INSERT INTO outbox (notification_id, created_at) \
           SELECT ids.id, created_at FROM jsonb_to_recordset($1::jsonb) AS x(id bigint, created_at bigint) \
           JOIN ids ON ids.ord = x.id), \
         d AS (\
           DELETE FROM outbox WHERE notification_id IN (SELECT value::bigint FROM jsonb_array_elements_text($3::jsonb))) \
         SELECT id FROM ids ORDER BY ord",
        unread = super::state::UNREAD
    );
    let taken = db
        .query_all_raw(stmt(
            db,
            &sql,
            [
                to_json(&rows.notifications)?.into(),
                to_json(&rows.recipients)?.into(),
                to_json(published)?.into(),
                count.into(),
            ],
        ))
        .await?
        .iter()
        .map(|r| r.try_get::<i64>("", "id"))
        .collect::<Result<Vec<_>, _>>()?;
    if taken.len() != new {
        return Err(StoreError::Corrupt(format!(
            "{} ids taken for {new} notifications",
            taken.len()
        )));
    }
    // Swap the ordinals in the answers for the ids.
    for slot in settled.iter_mut() {
        if let Settled::Done(Outcome::Created(created)) = slot
            && let Some(&id) = usize::try_from(created.id - 1)
                .ok()
                .and_then(|i| taken.get(i))
        {
            created.id = id;
        }
    }
    Ok(())
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
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

/// The stored answer for `claim`, if its key was used within the window, read outside
/// any batch.
pub async fn stored_answer(
    db: &DatabaseConnection,
    claim: &IdempotencyClaim,
    now: i64,
) -> Result<Option<Outcome>, StoreError> {
    find_idempotent(db, claim, now).await
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
