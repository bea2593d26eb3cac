//! The node's RabbitMQ side: one connection, one exclusive auto-delete queue
//! (`reddot.gw.<node>.<boot>`) bound to `reddot.broadcast` and, per online user, to
//! `reddot.direct`; one consumer feeding the hub. A supervisor reconnects with backoff,
//! redeclares the queue, re-binds every online user and then tells every session to
//! catch up from the database, so nothing published during the outage is missed.
//!
//! Knows nothing of transports.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt, stream::FuturesOrdered};
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use reddot_shared::{
    amqp::{self, lapin},
    backoff::Backoff,
    metrics as m,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{BindCmd, Binding, Hub};

pub struct Consumer {
    pub url: String,
    pub queue: String,
    pub hub: Arc<Hub>,
    pub binds: mpsc::UnboundedReceiver<BindCmd>,
    /// Whether the consumer is connected (for `/readyz` and metrics).
    pub connected: Arc<AtomicBool>,
}

impl Consumer {
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut ever_connected = false;
        loop {
            let result = self
                .connected_session(&shutdown, &mut ever_connected, &mut backoff)
                .await;
            self.connected.store(false, Ordering::Relaxed);
            metrics::gauge!(m::AMQP_CONNECTED).set(0.0);
            match result {
                Ok(()) => return Ok(()),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "RabbitMQ connection lost or refused; reconnecting")
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// One connection's life. Returns `Ok` only on shutdown.
    async fn connected_session(
        &mut self,
        shutdown: &CancellationToken,
        ever_connected: &mut bool,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let connect = tokio::time::timeout(
            amqp::CONNECT_TIMEOUT,
            Connection::connect(&self.url, ConnectionProperties::default()),
        );
        let conn = tokio::select! {
            conn = connect => conn.context("connecting timed out")?.context("connecting")?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let channel = conn.create_channel().await.context("opening a channel")?;
        amqp::declare_exchanges(&channel)
            .await
            .context("declaring exchanges")?;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        channel
            .queue_declare(self.queue.as_str().into(), exclusive, FieldTable::default())
            .await
            .context("declaring the node queue")?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                amqp::BROADCAST_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding to reddot.broadcast")?;
        let online = self.hub.online();
        let users: Vec<String> = online.iter().map(|(user, _)| user.clone()).collect();
        futures_util::stream::iter(users)
            .map(|user| {
                let (channel, queue) = (channel.clone(), self.queue.clone());
                async move { bind(&channel, &queue, &user).await }
            })
            .buffered(MAX_BINDS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        // Once a session is told it is bound it counts on this connection: if the
        // connection drops from here on (even before consuming starts, which deletes the
        // exclusive queue with whatever it held), the next one must catch sessions up.
        let resync = std::mem::replace(ever_connected, true);
        for (_, binding) in &online {
            binding.confirm();
        }
        // Delivery tracking buys nothing here: a node that loses messages catches its
        // sessions up from the database, the source of truth.
        let mut deliveries = channel
            .basic_consume(
                self.queue.as_str().into(),
                "reddot-gateway".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .context("consuming")?;
        self.connected.store(true, Ordering::Relaxed);
        metrics::gauge!(m::AMQP_CONNECTED).set(1.0);
        backoff.reset();
        tracing::info!(queue = %self.queue, users = online.len(), "consuming from RabbitMQ");
        // After a reconnect, sessions may have missed what was published meanwhile.
        if resync {
            self.hub.resync_all();
        }

        // Binding changes are pipelined: sent in order on one channel (the broker applies
        // them in that order), up to MAX_BINDS_IN_FLIGHT awaiting their replies, so a
        // storm of reconnects neither waits one round trip per user nor holds up
        // deliveries behind the binds.
        let mut in_flight: FuturesOrdered<BindRpc> = FuturesOrdered::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let _ = conn.close(200, "gateway stopping".into()).await;
                    return Ok(());
                }
                done = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(Some(binding)) = done.transpose()? {
                        binding.confirm();
                    }
                }
                cmd = self.binds.recv(), if in_flight.len() < MAX_BINDS_IN_FLIGHT => match cmd {
                    Some(BindCmd::Bind { user, binding }) => {
                        let (channel, queue) = (channel.clone(), self.queue.clone());
                        in_flight.push_back(Box::pin(async move {
                            bind(&channel, &queue, &user).await.map(|()| Some(binding))
                        }));
                    }
                    Some(BindCmd::Unbind { user }) => {
                        let (channel, queue) = (channel.clone(), self.queue.clone());
                        in_flight.push_back(Box::pin(async move {
                            channel
                                .queue_unbind(queue.as_str().into(), amqp::DIRECT_EXCHANGE.into(), user.as_str().into(), FieldTable::default())
                                .await
                                .context("unbinding a user")
                                .map(|()| None)
                        }));
                    }
                    None => return Ok(()),
                },
                delivery = deliveries.next() => match delivery {
                    Some(Ok(d)) => match amqp::decode(d.exchange.as_str(), d.routing_key.as_str(), &d.properties, &d.data) {
                        Ok(incoming) => self.hub.dispatch(incoming),
                        Err(err) => tracing::warn!(error = %err, "ignored an undecodable message"),
                    },
                    Some(Err(err)) => return Err(err).context("consumer failed"),
                    None => anyhow::bail!("the broker cancelled the consumer"),
                },
            }
        }
    }
}

/// Binding changes awaiting the broker's reply at once.
const MAX_BINDS_IN_FLIGHT: usize = 256;

/// A binding change in flight; a bind resolves to the flag its sessions wait on.
type BindRpc = Pin<Box<dyn Future<Output = anyhow::Result<Option<Arc<Binding>>>> + Send>>;

async fn bind(channel: &lapin::Channel, queue: &str, user: &str) -> anyhow::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            amqp::DIRECT_EXCHANGE.into(),
            user.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding a user")
}
