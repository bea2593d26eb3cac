//! What a user sees: replay after a cursor, the unread count, the newest visible id.
//! "Visible" everywhere means: targeted to the user or a broadcast, not expired, not
//! deleted by the user. Broadcasts have no per-user row until read or deleted (fan-out
//! on read), so every query has a targeted half and a broadcast half.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, FromQueryResult};
use serde::Serialize;

use super::{NOTIFICATION_COLUMNS, NotificationRow, StoreError, state, stmt};
use crate::domain::{Notification, UserId};

/// The unread badge: `count` covers every visible notification with id ≤ `as_of`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Unread {
    pub count: i64,
    pub by_kind: BTreeMap<String, i64>,
    pub as_of: i64,
}

const TARGETED_VISIBLE: &str = "r.user_id = $1 AND r.broadcast = 0 AND r.state < 2 AND (r.expires_at IS NULL OR r.expires_at > $2)";
const BROADCAST_VISIBLE: &str = "n.audience = 'all' AND (n.expires_at IS NULL OR n.expires_at > $2) \
     AND NOT EXISTS (SELECT 1 FROM recipients d WHERE d.user_id = $1 AND d.notification_id = n.id AND d.state = 2)";

/// Visible notifications with id > `after`, in id order, at most `limit`.
pub async fn replay(
    db: &impl ConnectionTrait,
    user: &UserId,
    after: i64,
    limit: u64,
    now_ms: i64,
) -> Result<Vec<Notification>, StoreError> {
    let args = || {
        [
            user.as_str().into(),
            now_ms.into(),
            after.into(),
            (limit as i64).into(),
        ]
    };
    let targeted = NotificationRow::find_by_statement(stmt(
        db,
        &format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM recipients r JOIN notifications n ON n.id = r.notification_id \
             WHERE {TARGETED_VISIBLE} AND r.notification_id > $3 ORDER BY r.notification_id LIMIT $4"
        ),
        args(),
    ))
    .all(db)
    .await?;
    let broadcasts = NotificationRow::find_by_statement(stmt(
        db,
        &format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications n WHERE {BROADCAST_VISIBLE} AND n.id > $3 ORDER BY n.id LIMIT $4"),
        args(),
    ))
    .all(db)
    .await?;
    merge_by_id(targeted, broadcasts, limit as usize)
}

/// Merges two id-sorted lists into one, keeping the first `limit`.
pub(crate) fn merge_by_id(
    a: Vec<NotificationRow>,
    b: Vec<NotificationRow>,
    limit: usize,
) -> Result<Vec<Notification>, StoreError> {
    let mut out = Vec::with_capacity((a.len() + b.len()).min(limit));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while out.len() < limit {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.id <= y.id => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => None,
        };
        let Some(row) = next else { break };
        out.push(Notification::try_from(row)?);
    }
    Ok(out)
}

/// The newest id visible to `user`, 0 if none.
pub async fn latest_id(
    db: &impl ConnectionTrait,
    user: &UserId,
    now_ms: i64,
) -> Result<i64, StoreError> {
    #[derive(FromQueryResult)]
    struct Latest {
        id: Option<i64>,
    }
    let targeted = Latest::find_by_statement(stmt(
        db,
        &format!("SELECT MAX(r.notification_id) AS id FROM recipients r WHERE {TARGETED_VISIBLE}"),
        [user.as_str().into(), now_ms.into()],
    ))
    .one(db)
    .await?
    .and_then(|l| l.id);
    let broadcast = Latest::find_by_statement(stmt(
        db,
        &format!("SELECT MAX(n.id) AS id FROM notifications n WHERE {BROADCAST_VISIBLE}"),
        [user.as_str().into(), now_ms.into()],
    ))
    .one(db)
    .await?
    .and_then(|l| l.id);
    Ok(targeted.unwrap_or(0).max(broadcast.unwrap_or(0)))
}

/// The unread count of `user` with its split by kind, as of the newest visible id.
pub async fn unread(
    db: &impl ConnectionTrait,
    user: &UserId,
    now_ms: i64,
) -> Result<Unread, StoreError> {
    let as_of = latest_id(db, user, now_ms).await?;
    let rows = db
        .query_all_raw(stmt(
            db,
            &format!(
                "SELECT r.kind AS kind, COUNT(*) AS n FROM recipients r \
                 WHERE r.user_id = $1 AND r.state = {unread} AND r.broadcast = 0 AND r.notification_id <= $3 \
                 AND (r.expires_at IS NULL OR r.expires_at > $2) GROUP BY r.kind \
                 UNION ALL \
                 SELECT n.kind AS kind, COUNT(*) AS n FROM notifications n \
                 WHERE n.audience = 'all' AND n.id <= $3 AND (n.expires_at IS NULL OR n.expires_at > $2) \
                 AND NOT EXISTS (SELECT 1 FROM recipients d WHERE d.user_id = $1 AND d.notification_id = n.id) GROUP BY n.kind",
                unread = state::UNREAD
            ),
            [user.as_str().into(), now_ms.into(), as_of.into()],
        ))
        .await?;
    let mut out = Unread {
        as_of,
        ..Default::default()
    };
    for row in rows {
        let kind: String = row.try_get("", "kind")?;
        let n: i64 = row.try_get("", "n")?;
        out.count += n;
        *out.by_kind.entry(kind).or_default() += n;
    }
    Ok(out)
}
