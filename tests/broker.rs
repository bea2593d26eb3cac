//! RabbitMQ for one test: a fresh vhost (through the management API), deleted at the
//! end, MQTT logins pointed at it, and a consumer that records what the producer
//! published.

use std::time::Duration;

use deadpool_lapin::lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use futures_util::StreamExt;
use reddot_shared::amqp::{self, Incoming};
use tokio::sync::mpsc;

const MANAGEMENT: &str = "http://127.0.0.1:15672/api";

pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub async fn new() -> anyhow::Result<Self> {
        let name = format!("reddot-test-{}", uuid::Uuid::new_v4().simple());
        let http = reqwest::Client::new();
        http.put(format!("{MANAGEMENT}/vhosts/{name}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await?
            .error_for_status()?;
        http.put(format!("{MANAGEMENT}/permissions/{name}/guest"))
            .basic_auth("guest", Some("guest"))
            .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await?
            .error_for_status()?;
        Ok(Self { name })
    }

    /// The AMQP URL of this vhost through `addr` (the broker, or a proxy in front of it).
    pub fn url_via(&self, addr: &str) -> String {
        format!("amqp://guest:guest@{addr}/{}", self.name)
    }

    pub fn url(&self) -> String {
        self.url_via(&crate::amqp_addr())
    }

    /// Bindings on `reddot.direct` of queues in this vhost (via the management API).
    pub async fn direct_bindings(&self) -> anyhow::Result<Vec<String>> {
        let list: Vec<serde_json::Value> = reqwest::Client::new()
            .get(format!(
                "{MANAGEMENT}/exchanges/{}/{}/bindings/source",
                self.name,
                amqp::DIRECT_EXCHANGE
            ))
            .basic_auth("guest", Some("guest"))
            .send()
            .await?
            .json()
            .await?;
        Ok(list
            .iter()
            .filter_map(|b| b["routing_key"].as_str().map(str::to_owned))
            .collect())
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        delete_now(format!("{MANAGEMENT}/vhosts/{}", self.name));
    }
}

/// A management API `DELETE`, finished before returning. Drop cannot await, and may run
/// inside a runtime, so it runs on a thread of its own; failures are ignored (clean-up).
fn delete_now(url: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            reqwest::Client::new()
                .delete(url)
                .basic_auth("guest", Some("guest"))
                .send()
                .await
        })?;
        anyhow::Ok(())
    })
    .join();
}

/// MQTT clients of the MQTT and Web-MQTT ports land in one test's vhost while this
/// lives: RabbitMQ's global `mqtt_port_to_vhost_mapping` (read at every MQTT login) maps
/// both ports to it. The broker never reads the vhost out of the username (user ids may
/// contain `:`), so this is how each test keeps its own vhost. One mapping for the whole
/// broker: MQTT tests run one at a time (they share the auth backend's port as well).
pub struct MqttVhost {
    _private: (),
}

impl MqttVhost {
    pub async fn route_to(vhost: &Vhost) -> anyhow::Result<Self> {
        let ports = serde_json::json!({
            crate::MQTT_PORT.to_string(): vhost.name,
            crate::WEB_MQTT_PORT.to_string(): vhost.name,
        });
        reqwest::Client::new()
            .put(format!(
                "{MANAGEMENT}/global-parameters/mqtt_port_to_vhost_mapping"
            ))
            .basic_auth("guest", Some("guest"))
            .json(&serde_json::json!({"name": "mqtt_port_to_vhost_mapping", "value": ports}))
            .send()
            .await?
            .error_for_status()?;
        Ok(Self { _private: () })
    }
}

impl Drop for MqttVhost {
    fn drop(&mut self) {
        delete_now(format!(
            "{MANAGEMENT}/global-parameters/mqtt_port_to_vhost_mapping"
        ));
    }
}

/// One notification as a test consumer received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: i64,
    pub users: Vec<String>,
    pub json: serde_json::Value,
    /// Wall-clock milliseconds when the consumer got it.
    pub received_at_ms: i64,
}

/// A queue bound to both exchanges (direct for `users`), recording deliveries.
pub struct TestConsumer {
    rx: mpsc::UnboundedReceiver<Received>,
    _conn: Connection,
}

impl TestConsumer {
    pub async fn bind(vhost: &Vhost, users: &[&str]) -> anyhow::Result<Self> {
        let conn = Connection::connect(&vhost.url(), ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        amqp::declare_exchanges(&ch).await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = q.name().clone();
        ch.queue_bind(
            queue.clone(),
            amqp::BROADCAST_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        for user in users {
            ch.queue_bind(
                queue.clone(),
                amqp::DIRECT_EXCHANGE.into(),
                (*user).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        let mut consumer = ch
            .basic_consume(
                queue,
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let _ = d.ack(BasicAckOptions::default()).await;
                if let Ok(Incoming::Notification(n)) = amqp::decode(
                    d.exchange.as_str(),
                    d.routing_key.as_str(),
                    &d.properties,
                    &d.data,
                ) {
                    let json = serde_json::from_str(&n.json).unwrap_or_default();
                    let _ = tx.send(Received {
                        id: n.id,
                        users: n.users.clone(),
                        json,
                        received_at_ms: chrono::Utc::now().timestamp_millis(),
                    });
                }
            }
        });
        Ok(Self { rx, _conn: conn })
    }

    /// The next delivery, or an error after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Received> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no delivery within {timeout:?}"))?
            .ok_or_else(|| anyhow::anyhow!("consumer closed"))
    }

    /// Collects exactly `n` deliveries, failing if they do not all come within `timeout`.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            out.push(
                self.next(left)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e} (got {} of {n})", out.len()))?,
            );
        }
        Ok(out)
    }

    /// Asserts nothing more arrives within `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(quiet, self.rx.recv()).await {
            Ok(Some(extra)) => anyhow::bail!("unexpected delivery {}", extra.id),
            _ => Ok(()),
        }
    }
}
