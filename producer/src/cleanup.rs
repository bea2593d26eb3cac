//! Periodic clean-up of long-expired notifications and old idempotency keys. Every
//! producer may run it: the deletes are idempotent.

use std::time::Duration;

use reddot_shared::{
    store::{maintenance, write::IDEMPOTENCY_WINDOW_MS},
    time::now_ms,
};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

pub struct Cleanup {
    pub db: DatabaseConnection,
    pub every: Duration,
    pub retention_after_expiry: Duration,
}

impl Cleanup {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            let now = now_ms();
            let cutoff = now
                - i64::try_from(self.retention_after_expiry.as_millis()).unwrap_or(i64::MAX / 2);
            match maintenance::delete_expired(&self.db, cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "removed long-expired notifications"),
                Err(err) => {
                    tracing::warn!(error = %err, "clean-up of expired notifications failed")
                }
            }
            if let Err(err) =
                maintenance::delete_idempotency_keys(&self.db, now - IDEMPOTENCY_WINDOW_MS).await
            {
                tracing::warn!(error = %err, "clean-up of idempotency keys failed");
            }
        }
    }
}
