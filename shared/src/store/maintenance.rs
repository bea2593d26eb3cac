//! Periodic clean-up: notifications long past their expiry (their recipient rows go
//! with them) and idempotency keys past their 24 h window.

use sea_orm::ConnectionTrait;

use super::{StoreError, stmt};

/// Deletes notifications that expired before `cutoff_ms`; returns how many.
pub async fn delete_expired(db: &impl ConnectionTrait, cutoff_ms: i64) -> Result<u64, StoreError> {
    db.execute_raw(stmt(
        db,
        "DELETE FROM recipients WHERE notification_id IN \
         (SELECT id FROM notifications WHERE expires_at IS NOT NULL AND expires_at < $1)",
        [cutoff_ms.into()],
    ))
    .await?;
    let res = db
        .execute_raw(stmt(
            db,
            "DELETE FROM notifications WHERE expires_at IS NOT NULL AND expires_at < $1",
            [cutoff_ms.into()],
        ))
        .await?;
    Ok(res.rows_affected())
}

/// Deletes idempotency keys created before `cutoff_ms`.
pub async fn delete_idempotency_keys(
    db: &impl ConnectionTrait,
    cutoff_ms: i64,
) -> Result<u64, StoreError> {
    let res = db
        .execute_raw(stmt(
            db,
            "DELETE FROM idempotency_keys WHERE created_at < $1",
            [cutoff_ms.into()],
        ))
        .await?;
    Ok(res.rows_affected())
}
