//! A whole test deployment in one value: database, vhost and a producer, plus helpers
//! to call the producer API the way a backend does.

use reqwest::StatusCode;
use serde_json::Value;

use crate::{Backend, Env, Service, ServiceKind, TestDb, Vhost};

pub struct Stack {
    pub db: TestDb,
    pub vhost: Vhost,
    pub producer: Service,
    pub http: reqwest::Client,
}

impl Stack {
    /// Database + vhost + one producer.
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        let db = TestDb::new(backend).await?;
        let vhost = Vhost::new().await?;
        let producer =
            Service::start(ServiceKind::Producer, &Env::new(&db.url, &vhost.url())).await?;
        Ok(Self {
            db,
            vhost,
            producer,
            http: reqwest::Client::new(),
        })
    }

    /// The environment this stack's services run with (to start more of them).
    pub fn env(&self) -> Env {
        Env::new(&self.db.url, &self.vhost.url())
    }

    /// `POST /api/v1/notifications` with the test API key.
    pub async fn post(&self, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        send_notification(&self.http, &self.producer, body, None).await
    }

    /// Posts and expects 201; returns the new id.
    pub async fn notify(&self, body: &Value) -> anyhow::Result<i64> {
        let (status, json) = self.post(body).await?;
        anyhow::ensure!(
            status == StatusCode::CREATED,
            "expected 201, got {status}: {json}"
        );
        json["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no id in {json}"))
    }

    /// Posts `count` notifications to `user`, one after another, titled `{prefix}{i}`;
    /// their ids in order.
    pub async fn notify_each(
        &self,
        user: &str,
        prefix: &str,
        count: usize,
    ) -> anyhow::Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let body = crate::gateway::to_users(&[user], &format!("{prefix}{i}"));
            ids.push(self.notify(&body).await?);
        }
        Ok(ids)
    }

    /// A gateway token for `user` minted by the producer.
    pub async fn token(&self, user: &str) -> anyhow::Result<String> {
        let res: Value = self
            .http
            .post(self.producer.url("/api/v1/tokens"))
            .bearer_auth(crate::API_KEY)
            .json(&serde_json::json!({"user_id": user}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        res["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no token in {res}"))
    }
}

/// `POST /api/v1/notifications` to `producer`, optionally with an Idempotency-Key.
pub async fn send_notification(
    http: &reqwest::Client,
    producer: &Service,
    body: &Value,
    idempotency_key: Option<&str>,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut req = http
        .post(producer.url("/api/v1/notifications"))
        .bearer_auth(crate::API_KEY)
        .json(body);
    if let Some(key) = idempotency_key {
        req = req.header("Idempotency-Key", key);
    }
    let res = req.send().await?;
    let status = res.status();
    let json = res.json().await.unwrap_or(Value::Null);
    Ok((status, json))
}
