//! The outbox: notifications committed but not yet confirmed by RabbitMQ. The relay
//! reads it in id order and deletes rows only after the broker confirmed them.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, FromQueryResult};

use super::{NOTIFICATION_COLUMNS, NotificationRow, StoreError, list, padded_ids, stmt};
use crate::domain::{Audience, Notification};

/// Recipients read per batch at most (one notification may exceed it alone).
const MAX_BATCH_RECIPIENTS: i64 = 50_000;

/// The oldest pending rows, in id order.
#[derive(Debug, Default)]
pub struct Pending {
    /// Every outbox row read, to delete once `items` are confirmed (expired or deleted
    /// notifications are dropped without publishing).
    pub ids: Vec<i64>,
    /// Notifications to publish with their recipients, in id order.
    pub items: Vec<(Notification, Vec<String>)>,
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
/// carry many recipients.
pub async fn pending(
    db: &impl ConnectionTrait,
    after: i64,
    limit: u32,
    now_ms: i64,
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
    let ids = padded_ids(&pending.ids);
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
    for row in notifications {
        let n = Notification::try_from(row)?;
        if n.is_expired_at(now_ms) {
            continue;
        }
        let mut to = users.remove(&n.id).unwrap_or_default();
        to.sort_unstable();
        pending.items.push((n, to));
    }
    Ok(pending)
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
