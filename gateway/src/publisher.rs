//! Publishes read-state events ("this user's read state changed") to `reddot.direct`, so
//! every node with a session of the user pushes a fresh unread count. Best effort: the
//! database is the truth, and a lost event only delays a badge until the next one.

use std::time::Duration;

use anyhow::Context;
use reddot_shared::{
    amqp::{self, lapin},
    domain::UserId,
};
use tokio::sync::Mutex;

pub struct Publisher {
    pool: deadpool_lapin::Pool,
    channel: Mutex<Option<(deadpool_lapin::Connection, lapin::Channel)>>,
}

impl Publisher {
    pub fn new(pool: deadpool_lapin::Pool) -> Self {
        Self {
            pool,
            channel: Mutex::new(None),
        }
    }

    pub async fn read_state_changed(&self, user: &UserId) {
        if let Err(err) = self.publish(user).await {
            tracing::warn!(error = %format!("{err:#}"), "could not publish a read-state event");
        }
    }

    async fn publish(&self, user: &UserId) -> anyhow::Result<()> {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_none_or(|(_, ch)| !ch.status().connected()) {
            let conn = tokio::time::timeout(Duration::from_secs(2), self.pool.get())
                .await
                .context("timed out")??;
            let channel = conn.create_channel().await?;
            amqp::declare_exchanges(&channel).await?;
            *slot = Some((conn, channel));
        }
        let Some((_, channel)) = slot.as_ref() else {
            anyhow::bail!("no channel")
        };
        let msg = amqp::encode_read_state(user);
        let published = channel
            .basic_publish(
                msg.exchange.into(),
                msg.routing_key.as_str().into(),
                Default::default(),
                &msg.payload,
                msg.properties,
            )
            .await;
        if published.is_err() {
            *slot = None;
        }
        published.map(drop).context("publishing")
    }
}
