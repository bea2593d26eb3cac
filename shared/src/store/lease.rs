//! Leases: a row per singleton job naming its current holder until `expires_at`. The
//! holder renews well before expiry; anyone may take an expired lease.

use sea_orm::ConnectionTrait;

use super::{StoreError, stmt};

/// Takes or renews `name` for `holder` until `now + ttl`. True if `holder` now holds it.
pub async fn acquire(
    db: &impl ConnectionTrait,
    name: &str,
    holder: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    let res = db
        .execute_raw(stmt(
            db,
            "UPDATE leases SET holder = $1, expires_at = $2 WHERE name = $3 AND (holder = $1 OR expires_at < $4)",
            [holder.into(), (now_ms + ttl_ms).into(), name.into(), now_ms.into()],
        ))
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Gives `name` up so that another instance can take it at once.
pub async fn release(
    db: &impl ConnectionTrait,
    name: &str,
    holder: &str,
) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        db,
        "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2",
        [name.into(), holder.into()],
    ))
    .await?;
    Ok(())
}
