//! Typed settings, loaded once from `REDDOT_*` environment variables. Nothing else in
//! Reddot reads the environment.

use std::{fmt, time::Duration};

/// Which service is loading settings: each requires its own secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Producer,
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret that never shows up in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{} {} required (set {}, or set REDDOT_DEV=1 for development values)",
        .0.join(" and "),
        if .0.len() > 1 { "are" } else { "is" },
        if .0.len() > 1 { "them" } else { "it" }
    )]
    Missing(Vec<&'static str>),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// sea-orm URL: `sqlite://…` (embedded default) or `postgres://…`.
    pub database_url: String,
    pub amqp_url: String,
    pub jwt_secret: Secret,
    /// `REDDOT_JWT_AUDIENCE` (unset: `aud` is not read): the gateway takes only tokens
    /// whose `aud` names it, and the producer mints tokens with it. For a secret that
    /// also signs tokens meant for something else.
    pub jwt_audience: Option<String>,
    /// Keys backends send as `Authorization: Bearer <key>` to the producer.
    pub api_keys: Vec<Secret>,
    /// Origins allowed by CORS, for WebSocket upgrades and as iframe `postMessage` targets.
    pub allowed_origins: Vec<String>,
    pub producer_addr: String,
    pub gateway_addr: String,
    /// This gateway node's name, part of its RabbitMQ queue name.
    pub node_id: String,
    /// How many missed notifications a resume replays before answering `reset` instead.
    pub replay_cap: usize,
    /// `REDDOT_DEV=1`: fixed development secrets, loudly logged.
    pub dev: bool,
    pub log_format: LogFormat,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// `REDDOT_BODY_TIMEOUT_SECS` (default 30, 0 = none): how long a request body may
    /// take to arrive, whole.
    pub body_timeout: Duration,
    pub db_max_connections: u32,
    /// How often a relay that is not the leader looks for an expired lease, and how often
    /// the leader looks at the outbox without being woken (rows written by other producers).
    pub relay_poll: Duration,
    /// How long a notification stays after it expired before the clean-up deletes it.
    pub retention_after_expiry: Duration,
    /// Largest number of events queued for one session before it is closed as too slow.
    pub session_buffer: usize,
    /// Seconds between SSE keep-alive comments and WebSocket pings.
    pub heartbeat: Duration,
    pub max_sessions_per_user: usize,
    pub max_connections: usize,
    /// How long the gateway keeps watching a short-polling user after her last poll, so
    /// that unchanged polls are answered from memory (0 turns the cache off).
    pub poll_cache_linger: Duration,
    /// How long a user's `reddot.direct` binding outlives her last session on a node, so
    /// that reconnecting clients find it in place (0: unbind at once).
    pub unbind_delay: Duration,
    /// `REDDOT_MQTT_PUBLISH` (default on): the relay also publishes each notification to
    /// `amq.topic` for RabbitMQ's MQTT plugin. Off saves one message per recipient for
    /// deployments without MQTT clients.
    pub mqtt_publish: bool,
    /// `REDDOT_CONNECT_RATE_PER_IP` (default 20, 0 = off): new streaming connections
    /// (SSE, WebSocket, iframe, long poll) per second one client IP may open, refilled
    /// continuously; past it the gateway answers 429 before any database work.
    pub connect_rate_per_ip: f64,
    /// `REDDOT_CONNECT_BURST_PER_IP` (default 100): connections one IP may open at once
    /// before the rate applies, so a whole office behind one NAT reconnecting after a
    /// restart is not turned away (browsers share one connection among their tabs).
    pub connect_burst_per_ip: u32,
    /// `REDDOT_CLIENT_IP_HEADER` (unset: the TCP peer address): a header such as
    /// `X-Real-IP` that a trusted reverse proxy *overwrites* with the client's address.
    /// Only set it behind such a proxy: clients can send any header themselves.
    pub client_ip_header: Option<String>,
}

/// Every variable [`Settings`] reads, for tooling that checks deployment files (a
/// unit test keeps it in lockstep with the names used below).
pub const ENV_VARS: &[&str] = &[
    "REDDOT_DATABASE_URL",
    "REDDOT_AMQP_URL",
    "REDDOT_JWT_SECRET",
    "REDDOT_JWT_AUDIENCE",
    "REDDOT_API_KEYS",
    "REDDOT_ALLOWED_ORIGINS",
    "REDDOT_PRODUCER_ADDR",
    "REDDOT_GATEWAY_ADDR",
    "REDDOT_NODE_ID",
    "REDDOT_REPLAY_CAP",
    "REDDOT_DEV",
    "REDDOT_LOG_FORMAT",
    "REDDOT_MAX_BODY_BYTES",
    "REDDOT_BODY_TIMEOUT_SECS",
    "REDDOT_DB_MAX_CONNECTIONS",
    "REDDOT_RELAY_POLL_MS",
    "REDDOT_RETENTION_AFTER_EXPIRY_SECS",
    "REDDOT_SESSION_BUFFER",
    "REDDOT_HEARTBEAT_SECS",
    "REDDOT_MAX_SESSIONS_PER_USER",
    "REDDOT_MAX_CONNECTIONS",
    "REDDOT_POLL_CACHE_SECS",
    "REDDOT_UNBIND_DELAY_SECS",
    "REDDOT_MQTT_PUBLISH",
    "REDDOT_CONNECT_RATE_PER_IP",
    "REDDOT_CONNECT_BURST_PER_IP",
    "REDDOT_CLIENT_IP_HEADER",
];

/// Development values used under `REDDOT_DEV=1` only.
pub const DEV_JWT_SECRET: &str = "reddot-dev-secret-change-me";
pub const DEV_API_KEY: &str = "dev-api-key";

impl Settings {
    /// Reads the environment.
    pub fn from_env(service: Service) -> Result<Self, ConfigError> {
        Self::from_lookup(service, |name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(
        service: Service,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let dev = get("REDDOT_DEV").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));

        let jwt_secret = match get("REDDOT_JWT_SECRET") {
            Some(s) => s,
            None if dev => DEV_JWT_SECRET.to_owned(),
            None => String::new(),
        };
        let api_keys: Vec<Secret> = match get("REDDOT_API_KEYS") {
            Some(list) => split_list(&list).map(Secret).collect(),
            None if dev => vec![Secret(DEV_API_KEY.to_owned())],
            None => Vec::new(),
        };
        // Every missing secret at once, so that a deployment is not fixed one restart
        // at a time.
        let mut missing = Vec::new();
        if jwt_secret.is_empty() {
            missing.push("REDDOT_JWT_SECRET");
        }
        if api_keys.is_empty() && service == Service::Producer {
            missing.push("REDDOT_API_KEYS");
        }
        if !missing.is_empty() {
            return Err(ConfigError::Missing(missing));
        }
        let allowed_origins = match get("REDDOT_ALLOWED_ORIGINS") {
            Some(list) => split_list(&list)
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
            None if dev => dev_origins(),
            None => Vec::new(),
        };
        if let Some(bad) = allowed_origins
            .iter()
            .find(|o| *o == "*" || !o.contains("://"))
        {
            return Err(ConfigError::Invalid {
                name: "REDDOT_ALLOWED_ORIGINS",
                reason: format!(
                    "'{bad}' is not an origin like https://app.example.com ('*' is never allowed)"
                ),
            });
        }
        let log_format = match get("REDDOT_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "REDDOT_LOG_FORMAT",
                    reason: format!("'{other}' is not text or json"),
                });
            }
        };
        let database_url =
            get("REDDOT_DATABASE_URL").unwrap_or_else(|| "sqlite://reddot.db?mode=rwc".into());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                name: "REDDOT_DATABASE_URL",
                reason: "use sqlite://… or postgres://…".into(),
            });
        }
        let default_pool = if database_url.starts_with("sqlite:") {
            8
        } else {
            16
        };

        Ok(Settings {
            db_max_connections: number(&get, "REDDOT_DB_MAX_CONNECTIONS", default_pool)?,
            database_url,
            amqp_url: get("REDDOT_AMQP_URL")
                .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            jwt_secret: Secret(jwt_secret),
            jwt_audience: match get("REDDOT_JWT_AUDIENCE") {
                Some(aud) if aud.len() > 256 => {
                    return Err(ConfigError::Invalid {
                        name: "REDDOT_JWT_AUDIENCE",
                        reason: "use at most 256 characters".into(),
                    });
                }
                aud => aud,
            },
            api_keys,
            allowed_origins,
            producer_addr: get("REDDOT_PRODUCER_ADDR").unwrap_or_else(|| "0.0.0.0:8080".into()),
            gateway_addr: get("REDDOT_GATEWAY_ADDR").unwrap_or_else(|| "0.0.0.0:8081".into()),
            node_id: match get("REDDOT_NODE_ID") {
                Some(id)
                    if id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
                        && id.len() <= 64 =>
                {
                    id
                }
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        name: "REDDOT_NODE_ID",
                        reason: "use 1-64 characters of A-Z a-z 0-9 _ -".into(),
                    });
                }
                None => default_node_id(),
            },
            replay_cap: number(&get, "REDDOT_REPLAY_CAP", 1000)?,
            dev,
            log_format,
            max_body_bytes: number(&get, "REDDOT_MAX_BODY_BYTES", 4 * 1024 * 1024)?,
            body_timeout: Duration::from_secs(number(&get, "REDDOT_BODY_TIMEOUT_SECS", 30)?),
            relay_poll: Duration::from_millis(number(&get, "REDDOT_RELAY_POLL_MS", 200)?),
            retention_after_expiry: Duration::from_secs(number(
                &get,
                "REDDOT_RETENTION_AFTER_EXPIRY_SECS",
                7 * 24 * 3600,
            )?),
            session_buffer: number(&get, "REDDOT_SESSION_BUFFER", 256)?,
            heartbeat: Duration::from_secs(number(&get, "REDDOT_HEARTBEAT_SECS", 15)?),
            max_sessions_per_user: number(&get, "REDDOT_MAX_SESSIONS_PER_USER", 64)?,
            max_connections: number(&get, "REDDOT_MAX_CONNECTIONS", 100_000)?,
            poll_cache_linger: Duration::from_secs(number(&get, "REDDOT_POLL_CACHE_SECS", 60)?),
            unbind_delay: Duration::from_secs(number(&get, "REDDOT_UNBIND_DELAY_SECS", 5)?),
            mqtt_publish: flag(&get, "REDDOT_MQTT_PUBLISH", true)?,
            connect_rate_per_ip: match number::<f64>(&get, "REDDOT_CONNECT_RATE_PER_IP", 20.0)? {
                r if r.is_finite() && r >= 0.0 => r,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "REDDOT_CONNECT_RATE_PER_IP",
                        reason: "use a number of connections per second, 0 to turn it off".into(),
                    });
                }
            },
            connect_burst_per_ip: match number(&get, "REDDOT_CONNECT_BURST_PER_IP", 100)? {
                0 => {
                    return Err(ConfigError::Invalid {
                        name: "REDDOT_CONNECT_BURST_PER_IP",
                        reason: "must be at least 1 (turn the limit off with REDDOT_CONNECT_RATE_PER_IP=0)".into(),
                    });
                }
                b => b,
            },
            client_ip_header: match get("REDDOT_CLIENT_IP_HEADER") {
                None => None,
                Some(h)
                    if !h.is_empty()
                        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                {
                    Some(h.to_ascii_lowercase())
                }
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        name: "REDDOT_CLIENT_IP_HEADER",
                        reason: "use a header name such as X-Real-IP".into(),
                    });
                }
            },
        })
    }

    /// Warnings worth logging at start-up: weak or development secrets.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let dev_secret = self.jwt_secret.expose() == DEV_JWT_SECRET;
        if self.dev {
            // The development values are public (they are in this file), so naming
            // them leaks nothing and tells the operator exactly what to replace.
            let mut in_use = Vec::new();
            if dev_secret {
                in_use.push(format!("REDDOT_JWT_SECRET={DEV_JWT_SECRET}"));
            }
            if self.api_keys.iter().any(|k| k.expose() == DEV_API_KEY) {
                in_use.push(format!("REDDOT_API_KEYS={DEV_API_KEY}"));
            }
            if self.allowed_origins == dev_origins() {
                in_use.push(format!(
                    "REDDOT_ALLOWED_ORIGINS={}",
                    self.allowed_origins.join(",")
                ));
            }
            if !in_use.is_empty() {
                out.push(format!(
                    "REDDOT_DEV=1: development values in use: {}; never run this in production",
                    in_use.join(", ")
                ));
            }
        }
        if !dev_secret && self.jwt_secret.expose().len() < 32 {
            out.push("REDDOT_JWT_SECRET is shorter than 32 characters; use a long random secret in production".into());
        }
        out
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

/// The demo page's origins, allowed under `REDDOT_DEV=1` when no origins are set.
fn dev_origins() -> Vec<String> {
    vec![
        "http://localhost:8081".into(),
        "http://127.0.0.1:8081".into(),
    ]
}

fn split_list(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn number<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|_| ConfigError::Invalid {
            name,
            reason: format!("'{raw}' is not a valid number"),
        }),
    }
}

/// A switch: `1`/`true`/`on` or `0`/`false`/`off` (any case).
fn flag(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "on") => Ok(true),
        Some("0" | "false" | "off") => Ok(false),
        Some(other) => Err(ConfigError::Invalid {
            name,
            reason: format!("'{other}' is not 1/0, true/false or on/off"),
        }),
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_-".contains(*c))
        .take(48)
        .collect();
    if host.is_empty() { "node".into() } else { host }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(service: Service, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(service, |k| vars.get(k).cloned())
    }

    #[test]
    fn env_vars_lists_exactly_the_variables_this_module_reads() {
        let source = include_str!("config.rs");
        let named: std::collections::BTreeSet<&str> = source
            .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .filter(|word| word.starts_with("REDDOT_") && word.len() > "REDDOT_".len())
            .collect();
        let listed: std::collections::BTreeSet<&str> = ENV_VARS.iter().copied().collect();
        assert_eq!(listed.len(), ENV_VARS.len(), "ENV_VARS has a duplicate");
        assert_eq!(named, listed);
    }

    #[test]
    fn missing_secrets_are_named_in_the_error() {
        let err = load(Service::Producer, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("REDDOT_JWT_SECRET"), "{err}");
        let err = load(
            Service::Producer,
            &[("REDDOT_JWT_SECRET", "0123456789abcdef")],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("REDDOT_API_KEYS"), "{err}");
    }

    #[test]
    fn dev_mode_fills_in_development_secrets_and_names_them() -> anyhow::Result<()> {
        let s = load(Service::Producer, &[("REDDOT_DEV", "1")])?;
        assert_eq!(s.jwt_secret.expose(), DEV_JWT_SECRET);
        assert_eq!(s.api_keys.len(), 1);
        let warnings = s.warnings().join("\n");
        assert!(
            warnings.contains("REDDOT_API_KEYS=dev-api-key"),
            "{warnings}"
        );
        assert!(warnings.contains("REDDOT_JWT_SECRET="), "{warnings}");

        let real_secret = "x".repeat(40);
        let set = load(
            Service::Producer,
            &[
                ("REDDOT_DEV", "1"),
                ("REDDOT_JWT_SECRET", &real_secret),
                ("REDDOT_API_KEYS", "k1"),
                ("REDDOT_ALLOWED_ORIGINS", "https://app.example.com"),
            ],
        )?;
        assert_eq!(set.warnings(), Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn every_missing_secret_is_named_at_once() {
        let err = load(Service::Producer, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("REDDOT_JWT_SECRET and REDDOT_API_KEYS are required"),
            "{err}"
        );
    }

    #[test]
    fn mqtt_publishing_is_on_unless_switched_off() -> anyhow::Result<()> {
        let dev = ("REDDOT_DEV", "1");
        assert!(load(Service::Producer, &[dev])?.mqtt_publish);
        for off in ["0", "false", "OFF"] {
            let s = load(Service::Producer, &[dev, ("REDDOT_MQTT_PUBLISH", off)])?;
            assert!(!s.mqtt_publish, "{off}");
        }
        assert!(load(Service::Producer, &[dev, ("REDDOT_MQTT_PUBLISH", "1")])?.mqtt_publish);
        let err = load(Service::Producer, &[dev, ("REDDOT_MQTT_PUBLISH", "maybe")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("REDDOT_MQTT_PUBLISH"), "{err}");
        Ok(())
    }

    #[test]
    fn the_connect_rate_limit_has_defaults_and_refuses_nonsense() -> anyhow::Result<()> {
        let dev = ("REDDOT_DEV", "1");
        let s = load(Service::Gateway, &[dev])?;
        assert_eq!((s.connect_rate_per_ip, s.connect_burst_per_ip), (20.0, 100));
        assert_eq!(s.client_ip_header, None);
        let s = load(
            Service::Gateway,
            &[
                dev,
                ("REDDOT_CONNECT_RATE_PER_IP", "0"),
                ("REDDOT_CLIENT_IP_HEADER", "X-Real-IP"),
            ],
        )?;
        assert_eq!(s.connect_rate_per_ip, 0.0);
        assert_eq!(s.client_ip_header.as_deref(), Some("x-real-ip"));
        for bad in [
            ("REDDOT_CONNECT_RATE_PER_IP", "-1"),
            ("REDDOT_CONNECT_RATE_PER_IP", "NaN"),
            ("REDDOT_CONNECT_BURST_PER_IP", "0"),
            ("REDDOT_CLIENT_IP_HEADER", "X Real IP"),
        ] {
            let err = load(Service::Gateway, &[dev, bad])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(bad.0), "{bad:?}: {err}");
        }
        Ok(())
    }

    #[test]
    fn lists_are_comma_separated_and_star_is_refused() -> anyhow::Result<()> {
        let base = [
            ("REDDOT_JWT_SECRET", "0123456789abcdef"),
            ("REDDOT_API_KEYS", " k1, k2 ,,"),
        ];
        let s = load(
            Service::Producer,
            &[
                base[0],
                base[1],
                ("REDDOT_ALLOWED_ORIGINS", "http://a.test, https://b.test/"),
            ],
        )?;
        assert_eq!(
            s.api_keys.iter().map(Secret::expose).collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        assert_eq!(s.allowed_origins, ["http://a.test", "https://b.test"]);
        assert!(
            load(
                Service::Producer,
                &[base[0], base[1], ("REDDOT_ALLOWED_ORIGINS", "*")]
            )
            .is_err()
        );
        Ok(())
    }
}
