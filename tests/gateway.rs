//! Gateway nodes for a test [`Stack`], and gateway tokens minted in the test itself
//! (expired, short-lived, wrong secret, `alg: none`) next to the producer's.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::{
    Env, Service, ServiceKind, Stack,
    clients::{Client, Connect, Sse, Ws},
};

/// One gateway node (`REDDOT_NODE_ID` = `node`), a real `reddot-gateway` process.
pub struct Gateway {
    pub node: String,
    pub service: Service,
}

impl Gateway {
    /// A node of `stack` with the stack's database and vhost.
    pub async fn start(stack: &Stack, node: &str) -> anyhow::Result<Self> {
        Self::start_with(node, stack.env()).await
    }

    /// A node started with `env` (e.g. a proxied RabbitMQ URL or a small replay cap).
    pub async fn start_with(node: &str, env: Env) -> anyhow::Result<Self> {
        let service =
            Service::start(ServiceKind::Gateway, &env.with("REDDOT_NODE_ID", node)).await?;
        Ok(Self {
            node: node.to_owned(),
            service,
        })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn base(&self) -> String {
        self.service.url("")
    }

    pub fn url(&self, path: &str) -> String {
        self.service.url(path)
    }

    pub fn port(&self) -> u16 {
        self.service.port
    }

    pub async fn sse(&self, connect: &Connect) -> anyhow::Result<Sse> {
        Sse::open(&self.base(), connect).await
    }

    pub async fn ws(&self, connect: &Connect) -> anyhow::Result<Ws> {
        Ws::open(&self.base(), connect).await
    }

    /// A session on `transport` (`"sse"` or `"ws"`).
    pub async fn client(&self, transport: &str, connect: &Connect) -> anyhow::Result<Client> {
        Ok(match transport {
            "sse" => Client::Sse(Box::new(self.sse(connect).await?)),
            "ws" => Client::Ws(Box::new(self.ws(connect).await?)),
            other => anyhow::bail!("unknown transport {other}"),
        })
    }

    /// `GET /readyz` as JSON (it reports `sessions`, `users_online` and `rabbitmq`).
    pub async fn readyz(&self) -> anyhow::Result<Value> {
        Ok(reqwest::get(self.url("/readyz")).await?.json().await?)
    }

    /// Polls `/readyz` until `settled` holds, failing after `timeout`.
    pub async fn readyz_until(
        &self,
        timeout: Duration,
        what: &str,
        settled: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = self.readyz().await;
            if let Ok(body) = &last
                && settled(body)
            {
                return Ok(body.clone());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {timeout:?} (last /readyz: {last:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.service.kill();
    }

    pub fn logs(&self) -> String {
        self.service.logs()
    }
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An HS256 token for `claims` signed with `secret`.
pub fn sign(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// A valid gateway token for `user` that expires `ttl_secs` from now (negative: past).
pub fn token_expiring_in(user: &str, ttl_secs: i64) -> String {
    sign(
        crate::JWT_SECRET,
        &json!({"sub": user, "exp": now_secs() + ttl_secs, "iat": now_secs()}),
    )
}

/// An unsigned token (`"alg": "none"`) with a correct-looking payload.
pub fn unsigned_token(user: &str) -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = base64url(
        json!({"sub": user, "exp": now_secs() + 3600})
            .to_string()
            .as_bytes(),
    );
    format!("{header}.{claims}.")
}

/// `token` with its header replaced by `header` (the signature no longer matches it):
/// an algorithm-confusion attempt such as `{"alg":"RS256"}` over an HS256 token.
pub fn with_header(token: &str, header: &Value) -> String {
    let rest = token.split_once('.').map_or("", |(_, rest)| rest);
    format!("{}.{rest}", base64url(header.to_string().as_bytes()))
}

/// A token for `claims` signed with the right secret but HS512, which the gateway
/// must refuse: it accepts HS256 only.
pub fn sign_hs512(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        claims,
        &EncodingKey::from_secret(crate::JWT_SECRET.as_bytes()),
    )
    .expect("HS512 signing cannot fail")
}

/// Base64url without padding (RFC 4648 §5), as JWTs use it.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=group.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// A notification body for `users` with `title`.
pub fn to_users(users: &[&str], title: &str) -> Value {
    json!({"to": {"users": users}, "kind": "comment", "title": title})
}

/// A broadcast body with `title`.
pub fn to_all(title: &str) -> Value {
    json!({"to": {"all": true}, "kind": "announcement", "title": title})
}

#[cfg(test)]
mod tests {
    use super::base64url;

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64url(plain.as_bytes()), encoded);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
