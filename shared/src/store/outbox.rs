//! The outbox: notifications committed but not yet confirmed by RabbitMQ. The relay
//! reads it in id order and deletes rows only after the broker confirmed them.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, FromQueryResult};

use super::{NOTIFICATION_COLUMNS, NotificationRow, StoreError, list, padded_ids, stmt};
use crate::domain::{Audience, Notification};

/// Recipients read per batch at most (one notification may exceed it alone).
const MAX_BATCH_RECIPIENTS: i64 = 50_000;

/// A notification ready to publish, with its recipients (sorted; none for a broadcast).
pub type Publishable = (Notification, Vec<String>);

/// The oldest pending rows, in id order.
#[derive(Debug, Default)]
pub struct Pending {
    /// Every outbox row read, to delete once `items` are confirmed (expired or deleted
    /// notifications are dropped without publishing).
    pub ids: Vec<i64>,
    /// Notifications to publish with their recipients, in id order.
    pub items: Vec<Publishable>,
    /// When the oldest row was committed (ms), for the publish-lag metric.
    pub created_at: Vec<i64>,
}

#[derive(FromQueryResult)]
struct OutboxRow {
    notification_id: i64,
    created_at: i64,
    recipients: Option<i64>,
}

/// Reads up to `limit` pending notifications with ids above `after`, fewer when they
/// carry many recipients. `known` is handed the pending ids (ascending) and returns
/// those of them the caller already holds, exactly as committed; only the others are
/// read from the database.
pub async fn pending(
    db: &impl ConnectionTrait,
    after: i64,
    limit: u32,
    now_ms: i64,
    known: impl FnOnce(&[i64]) -> HashMap<i64, Publishable>,
) -> Result<Pending, StoreError> {
    // The recipient count by a lookup per row rather than a join: PostgreSQL merges a
    // join, walking the notifications' index from its first id, ever longer as the table
    // grows (20 ms a read at 40,000 rows).
    let rows = OutboxRow::find_by_statement(stmt(
        db,
        "SELECT o.notification_id, o.created_at, \
         (SELECT n.recipients FROM notifications n WHERE n.id = o.notification_id) AS recipients \
         FROM outbox o WHERE o.notification_id > $1 ORDER BY o.notification_id LIMIT $2",
        [after.into(), i64::from(limit).into()],
    ))
    .all(db)
    .await?;
    let mut pending = Pending::default();
    let mut recipients = 0;
    for row in rows {
        recipients += row.recipients.unwrap_or(0);
        if !pending.ids.is_empty() && recipients > MAX_BATCH_RECIPIENTS {
            break;
        }
        pending.ids.push(row.notification_id);
        pending.created_at.push(row.created_at);
    }
    if pending.ids.is_empty() {
        return Ok(pending);
    }
    let mut known = known(&pending.ids);
    let mut read = read_notifications(db, &pending.ids, &known).await?;
    for id in &pending.ids {
        // Missing from both: the clean-up deleted it (expired) before it was published.
        let Some(item) = known.remove(id).or_else(|| read.remove(id)) else {
            continue;
        };
        if !item.0.is_expired_at(now_ms) {
            pending.items.push(item);
        }
    }
    Ok(pending)
}

/// The notifications among `ids` that are not in `known`, with their recipients.
async fn read_notifications(
    db: &impl ConnectionTrait,
    ids: &[i64],
    known: &HashMap<i64, Publishable>,
) -> Result<HashMap<i64, Publishable>, StoreError> {
    let wanted: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !known.contains_key(id))
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let ids = padded_ids(&wanted);
    let in_list = list(ids.len(), 1);
    let notifications = NotificationRow::find_by_statement(stmt(
        db,
        &format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications n WHERE n.id IN ({in_list}) ORDER BY n.id"),
        ids.iter().map(|id| (*id).into()),
    ))
    .all(db)
    .await?;
    let mut users: HashMap<i64, Vec<String>> = HashMap::new();
    let targeted: Vec<i64> = notifications
        .iter()
        .filter(|n| n.audience == Audience::User.as_str())
        .map(|n| n.id)
        .collect();
    if !targeted.is_empty() {
        // Only targeted ids, so no `broadcast = 0` (their rows are all targeted ones): with
        // it PostgreSQL's cached plan could take the rows by `broadcast` from the unread
        // index and test each against the id list — the whole table per read.
        let ids = padded_ids(&targeted);
        let rows = db
            .query_all_raw(stmt(
                db,
                &format!(
                    "SELECT notification_id, user_id FROM recipients WHERE notification_id IN ({})",
                    list(ids.len(), 1)
                ),
                ids.iter().map(|id| (*id).into()),
            ))
            .await?;
        for row in rows {
            let id: i64 = row.try_get("", "notification_id")?;
            users
                .entry(id)
                .or_default()
                .push(row.try_get("", "user_id")?);
        }
    }
    let mut read = HashMap::with_capacity(notifications.len());
    for row in notifications {
        let n = Notification::try_from(row)?;
        let mut to = users.remove(&n.id).unwrap_or_default();
        to.sort_unstable();
        read.insert(n.id, (n, to));
    }
    Ok(read)
}

/// Deletes rows whose notifications the broker confirmed.
pub async fn mark_published(db: &impl ConnectionTrait, ids: &[i64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let values = ids.iter().map(|id| (*id).into()).collect::<Vec<_>>();
    db.execute_raw(stmt(
        db,
        &format!(
            "DELETE FROM outbox WHERE notification_id IN ({})",
            list(ids.len(), 1)
        ),
        values,
    ))
    .await?;
    Ok(())
}

/// How many notifications wait to be published.
pub async fn lag(db: &impl ConnectionTrait) -> Result<i64, StoreError> {
    let row = db
        .query_one_raw(stmt(db, "SELECT COUNT(*) AS n FROM outbox", []))
        .await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0))
}
