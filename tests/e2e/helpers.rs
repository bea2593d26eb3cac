//! What several e2e modules need beyond the harness: a stack with a tailored producer,
//! requests that keep their headers, row counts, which producer leads the relay, and
//! waiting for a condition with a deadline instead of sleeping.

use std::{future::Future, time::Duration};

use reddot_tests::{Backend, Env, Service, ServiceKind, Stack, TestDb, Vhost};
use reqwest::{StatusCode, header::HeaderMap};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::Value;

/// A stack whose producer runs with the environment `configure` returns (given the
/// stack's database and vhost), e.g. a smaller body limit or a proxied broker URL.
pub async fn stack_with(
    backend: Backend,
    configure: impl FnOnce(&TestDb, &Vhost) -> Env,
) -> anyhow::Result<Stack> {
    let db = TestDb::new(backend).await?;
    let vhost = Vhost::new().await?;
    let producer = Service::start(ServiceKind::Producer, &configure(&db, &vhost)).await?;
    Ok(Stack {
        db,
        vhost,
        producer,
        http: reqwest::Client::new(),
    })
}

/// An HTTP answer with everything the assertions look at.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as JSON, or `Value::Null` when it is not JSON.
    pub json: Value,
}

impl Answer {
    pub async fn from(res: reqwest::Response) -> anyhow::Result<Self> {
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await?;
        Ok(Self {
            status,
            headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }

    /// `error.field` of an error body.
    pub fn field(&self) -> Option<&str> {
        self.json["error"]["field"].as_str()
    }
}

/// `POST path` with a JSON body, as the backend holding `api_key` (`None`: no
/// `Authorization` header at all), optionally with an `Idempotency-Key`.
pub async fn post_json(
    stack: &Stack,
    path: &str,
    api_key: Option<&str>,
    body: &Value,
    idempotency_key: Option<&str>,
) -> anyhow::Result<Answer> {
    let mut req = stack.http.post(stack.producer.url(path)).json(body);
    if let Some(key) = api_key {
        req = req.bearer_auth(key);
    }
    if let Some(key) = idempotency_key {
        req = req.header("Idempotency-Key", key);
    }
    Answer::from(req.send().await?).await
}

/// `GET path` on the producer.
pub async fn get(stack: &Stack, path: &str) -> anyhow::Result<Answer> {
    Answer::from(stack.http.get(stack.producer.url(path)).send().await?).await
}

/// `SELECT COUNT(*) FROM {from}` on the stack's database (a fresh connection each
/// time): `from` is a table, optionally with a `WHERE` clause.
pub async fn count_rows(stack: &Stack, from: &str) -> anyhow::Result<i64> {
    let db = stack.db.connect().await?;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {from}"),
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("COUNT(*) returned no row"))?;
    let n = row.try_get::<i64>("", "n")?;
    db.close().await?;
    Ok(n)
}

/// Calls `probe` until it yields `Some`, failing after `timeout`; `what` names the
/// awaited condition in the error, together with the last value seen.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met".to_owned(),
            Err(err) => format!("{err:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: not within {timeout:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The producer's `reddot_relay_leader` gauge (1 while it holds the relay lease).
pub async fn leads(http: &reqwest::Client, producer: &Service) -> anyhow::Result<bool> {
    let text = http
        .get(producer.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .any(|l| l.starts_with("reddot_relay_leader") && l.ends_with(" 1")))
}

/// `host:port` of a `postgres://user@host:port/db` URL.
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority)
}

/// `method path` on the gateway as the holder of `token`.
pub async fn call(
    stack: &Stack,
    gw: &reddot_tests::gateway::Gateway,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Answer> {
    let mut req = stack.http.request(method, gw.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(body);
    }
    Answer::from(req.send().await?).await
}
