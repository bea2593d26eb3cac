//! Changing a user's read state: mark read, mark all read, delete. A broadcast gets a
//! per-user row only now (fan-out on read); a targeted notification's row is updated.

use sea_orm::ConnectionTrait;

use super::{StoreError, list, state, stmt};
use crate::domain::UserId;

#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// How many notifications changed state.
    Done(u64),
    /// This id is not visible to the user (unknown, another user's, expired or deleted):
    /// nothing was changed.
    NotVisible(i64),
}

/// Which of `ids` are visible to `user`, split into (targeted, broadcast).
async fn visible(
    db: &impl ConnectionTrait,
    user: &UserId,
    ids: &[i64],
    now_ms: i64,
) -> Result<(Vec<i64>, Vec<i64>), StoreError> {
    let mut values = vec![user.as_str().into(), now_ms.into()];
    values.extend(ids.iter().map(|id| (*id).into()));
    let in_list = list(ids.len(), 3);
    let column = |rows: Vec<sea_orm::QueryResult>| -> Result<Vec<i64>, StoreError> {
        rows.iter()
            .map(|r| r.try_get::<i64>("", "id").map_err(StoreError::from))
            .collect()
    };
    let targeted = column(
        db.query_all_raw(stmt(
            db,
            &format!(
                "SELECT r.notification_id AS id FROM recipients r WHERE r.user_id = $1 AND r.broadcast = 0 AND r.state < 2 \
                 AND (r.expires_at IS NULL OR r.expires_at > $2) AND r.notification_id IN ({in_list})"
            ),
            values.clone(),
        ))
        .await?,
    )?;
    let broadcast = column(
        db.query_all_raw(stmt(
            db,
            &format!(
                "SELECT n.id AS id FROM notifications n WHERE n.audience = 'all' AND (n.expires_at IS NULL OR n.expires_at > $2) \
                 AND n.id IN ({in_list}) AND NOT EXISTS \
                 (SELECT 1 FROM recipients d WHERE d.user_id = $1 AND d.notification_id = n.id AND d.state = 2)"
            ),
            values,
        ))
        .await?,
    )?;
    Ok((targeted, broadcast))
}

/// Marks `ids` read for `user`; refuses the whole request if one is not visible.
pub async fn mark_read(
    db: &impl ConnectionTrait,
    user: &UserId,
    ids: &[i64],
    now_ms: i64,
) -> Result<Change, StoreError> {
    if ids.is_empty() {
        return Ok(Change::Done(0));
    }
    let (targeted, broadcast) = visible(db, user, ids, now_ms).await?;
    if let Some(missing) = ids
        .iter()
        .find(|id| !targeted.contains(id) && !broadcast.contains(id))
    {
        return Ok(Change::NotVisible(*missing));
    }
    let mut changed = 0;
    if !targeted.is_empty() {
        let mut values = vec![user.as_str().into()];
        values.extend(targeted.iter().map(|id| (*id).into()));
        changed += db
            .execute_raw(stmt(
                db,
                &format!(
                    "UPDATE recipients SET state = {read} WHERE user_id = $1 AND broadcast = 0 AND state = {unread} \
                     AND notification_id IN ({})",
                    list(targeted.len(), 2),
                    read = state::READ,
                    unread = state::UNREAD
                ),
                values,
            ))
            .await?
            .rows_affected();
    }
    if !broadcast.is_empty() {
        let mut values = vec![user.as_str().into()];
        values.extend(broadcast.iter().map(|id| (*id).into()));
        changed += db
            .execute_raw(stmt(
                db,
                &format!(
                    "INSERT INTO recipients (user_id, notification_id, broadcast, kind, expires_at, state) \
                     SELECT $1, n.id, 1, n.kind, n.expires_at, {read} FROM notifications n WHERE n.audience = 'all' AND n.id IN ({}) \
                     ON CONFLICT (user_id, notification_id) DO NOTHING",
                    list(broadcast.len(), 2),
                    read = state::READ
                ),
                values,
            ))
            .await?
            .rows_affected();
    }
    Ok(Change::Done(changed))
}

/// Marks everything visible to `user` read.
pub async fn mark_all_read(
    db: &impl ConnectionTrait,
    user: &UserId,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let targeted = db
        .execute_raw(stmt(
            db,
            &format!(
                "UPDATE recipients SET state = {} WHERE user_id = $1 AND state = {}",
                state::READ,
                state::UNREAD
            ),
            [user.as_str().into()],
        ))
        .await?
        .rows_affected();
    let broadcast = db
        .execute_raw(stmt(
            db,
            &format!(
                "INSERT INTO recipients (user_id, notification_id, broadcast, kind, expires_at, state) \
                 SELECT $1, n.id, 1, n.kind, n.expires_at, {} FROM notifications n \
                 WHERE n.audience = 'all' AND (n.expires_at IS NULL OR n.expires_at > $2) \
                 ON CONFLICT (user_id, notification_id) DO NOTHING",
                state::READ
            ),
            [user.as_str().into(), now_ms.into()],
        ))
        .await?
        .rows_affected();
    Ok(targeted + broadcast)
}

/// Hides `id` from `user`'s inbox and counts.
pub async fn delete(
    db: &impl ConnectionTrait,
    user: &UserId,
    id: i64,
    now_ms: i64,
) -> Result<Change, StoreError> {
    let (targeted, broadcast) = visible(db, user, &[id], now_ms).await?;
    let sql = if !targeted.is_empty() {
        format!(
            "UPDATE recipients SET state = {} WHERE user_id = $1 AND notification_id = $2 AND broadcast = 0",
            state::DELETED
        )
    } else if !broadcast.is_empty() {
        format!(
            "INSERT INTO recipients (user_id, notification_id, broadcast, kind, expires_at, state) \
             SELECT $1, n.id, 1, n.kind, n.expires_at, {deleted} FROM notifications n WHERE n.id = $2 \
             ON CONFLICT (user_id, notification_id) DO UPDATE SET state = {deleted}",
            deleted = state::DELETED
        )
    } else {
        return Ok(Change::NotVisible(id));
    };
    let changed = db
        .execute_raw(stmt(db, &sql, [user.as_str().into(), id.into()]))
        .await?
        .rows_affected();
    Ok(Change::Done(changed))
}
