//! The per-client-IP limit on opening streaming connections (SSE, WebSocket, iframe,
//! long poll): a token bucket per IP, checked before authentication and before any
//! database work, so one address cannot make the gateway replay and count in a loop.
//! It only answers "may this address connect now"; it knows nothing of sessions.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

use actix_web::{
    HttpResponse, ResponseError,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header,
    middleware::Next,
    web,
};
use reddot_shared::error::{ApiError, ErrorCode};

use crate::state::GatewayState;

/// Most addresses tracked at once. Past it an untracked address is let through rather
/// than evicting the live bucket of another (the global connection cap still holds);
/// reaching it takes this many distinct addresses within one burst's refill time.
const MAX_TRACKED: usize = 100_000;
/// How often buckets that refilled completely (the same as no bucket) are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

pub struct ConnectLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    by_ip: HashMap<IpAddr, Bucket>,
    last_sweep: Instant,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(burst)
    }
}

impl ConnectLimiter {
    /// `None` when the limit is off (`rate` 0).
    pub fn new(rate_per_sec: f64, burst: u32) -> Option<Self> {
        (rate_per_sec > 0.0).then(|| Self {
            rate: rate_per_sec,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(Buckets {
                by_ip: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        })
    }

    /// Takes one connection from `ip`'s bucket, or says how long until one is free.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = bucket_key(ip);
        let (rate, burst) = (self.rate, self.burst);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.saturating_duration_since(buckets.last_sweep) >= SWEEP_EVERY
            || buckets.by_ip.len() >= MAX_TRACKED
        {
            buckets
                .by_ip
                .retain(|_, b| b.refilled(now, rate, burst) < burst);
            buckets.last_sweep = now;
        }
        let tokens = match buckets.by_ip.get(&key) {
            Some(b) => b.refilled(now, rate, burst),
            None if buckets.by_ip.len() >= MAX_TRACKED => return Ok(()),
            None => burst,
        };
        if tokens >= 1.0 {
            buckets.by_ip.insert(
                key,
                Bucket {
                    tokens: tokens - 1.0,
                    at: now,
                },
            );
            Ok(())
        } else {
            buckets.by_ip.insert(key, Bucket { tokens, at: now });
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .map(|b| b.by_ip.len())
            .unwrap_or_default()
    }
}

/// IPv6 clients are limited per /64: one end site usually gets a whole /64, so per
/// address an attacker would have 2^64 buckets to spread over.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The client's address: the TCP peer, or the configured header that a trusted proxy
/// overwrites (`REDDOT_CLIENT_IP_HEADER`), falling back to the peer when it is absent.
fn client_ip(req: &ServiceRequest, header_name: Option<&str>) -> Option<IpAddr> {
    header_name
        .and_then(|name| req.headers().get(name))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| req.peer_addr().map(|a| a.ip()))
}

/// A connection refused by the limit: 429 with the error table's body and `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("too many new connections from this address")]
pub struct RateLimited {
    retry_after_secs: u64,
}

impl ResponseError for RateLimited {
    fn status_code(&self) -> actix_web::http::StatusCode {
        ErrorCode::TooManyRequests.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = ApiError::new(
            ErrorCode::TooManyRequests,
            format!(
                "too many new connections from this address; retry in {} s",
                self.retry_after_secs
            ),
        )
        .error_response();
        res.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(self.retry_after_secs),
        );
        res
    }
}

/// Middleware for the streaming routes: refuses a connection over its IP's limit before
/// the token is even looked at. The refusal is an `Ok` response so that CORS headers
/// are still added and a browser page can read it.
pub async fn limit_connects(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let verdict = req.app_data::<web::Data<GatewayState>>().and_then(|state| {
        let limiter = state.connect_limiter.as_ref()?;
        let ip = client_ip(&req, state.client_ip_header.as_deref())?;
        limiter.check(ip, Instant::now()).err()
    });
    match verdict {
        None => Ok(next.call(req).await?.map_into_left_body()),
        Some(wait) => {
            metrics::counter!(reddot_shared::metrics::CONNECTS_LIMITED).increment(1);
            tracing::debug!(path = %req.path(), "connect rate limit reached");
            let refused = RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            };
            Ok(req
                .into_response(refused.error_response())
                .map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    fn on(rate: f64, burst: u32) -> anyhow::Result<ConnectLimiter> {
        ConnectLimiter::new(rate, burst).ok_or_else(|| anyhow::anyhow!("the limit is off"))
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate_and_other_addresses_are_unaffected() -> anyhow::Result<()> {
        let limiter = on(2.0, 5)?;
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check(ip("10.0.0.1"), t0).is_ok());
        }
        let wait = limiter.check(ip("10.0.0.1"), t0).err();
        assert!(
            wait.is_some_and(|w| w <= Duration::from_millis(500)),
            "{wait:?}"
        );
        assert!(limiter.check(ip("10.0.0.2"), t0).is_ok());
        // Half a second refills one connection at 2/s, and only one.
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.check(ip("10.0.0.1"), later).is_ok());
        assert!(limiter.check(ip("10.0.0.1"), later).is_err());
        Ok(())
    }

    #[test]
    fn ipv6_addresses_share_their_slash_64_and_mapped_ipv4_is_ipv4() -> anyhow::Result<()> {
        let limiter = on(1.0, 1)?;
        let t0 = Instant::now();
        assert!(limiter.check(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(limiter.check(ip("2001:db8:1:2::ffff"), t0).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1"), t0).is_ok());
        assert!(limiter.check(ip("192.0.2.7"), t0).is_ok());
        assert!(limiter.check(ip("::ffff:192.0.2.7"), t0).is_err());
        Ok(())
    }

    #[test]
    fn refilled_buckets_are_forgotten_so_memory_stays_bounded() -> anyhow::Result<()> {
        let limiter = on(10.0, 10)?;
        let t0 = Instant::now();
        for n in 0..1000u32 {
            assert!(limiter.check(IpAddr::V4(n.into()), t0).is_ok());
        }
        assert_eq!(limiter.tracked(), 1000);
        // After the sweep interval every bucket is full again: all are dropped.
        assert!(limiter.check(ip("10.9.9.9"), t0 + SWEEP_EVERY).is_ok());
        assert_eq!(limiter.tracked(), 1);
        Ok(())
    }

    #[test]
    fn zero_turns_the_limit_off() {
        assert!(ConnectLimiter::new(0.0, 100).is_none());
    }
}
