//! RabbitMQ's HTTP auth backend (`rabbitmq_auth_backend_http`) for MQTT clients: the
//! broker asks, the gateway answers the plain words `allow` or `deny`.
//!
//! An MQTT client logs in with its user id as username and a gateway JWT as password,
//! and may only read: its own topic `reddot/users/<user id>` and `reddot/broadcast`,
//! through the queues RabbitMQ's MQTT plugin declares for its client id. Publishing is
//! never allowed. The broker consults this backend only for users its own user database
//! does not know (`auth_backends.1 = internal`, `auth_backends.2 = http`), so the
//! services' own broker user is unaffected.
//!
//! What RabbitMQ sends (verified against 3.10 with `auth_http.http_method = post`, form
//! fields; 3.13 sends the same names):
//! - `user`: `username`, `password`, `vhost`, `client_id`
//! - `vhost`: `username`, `vhost`, `ip`, `client_id`
//! - `resource`: `username`, `vhost`, `resource` (`queue` / `exchange`), `name`,
//!   `permission` (`configure` / `write` / `read`), `client_id`
//! - `topic`: `username`, `vhost`, `resource` (`topic`), `name` (the exchange),
//!   `permission` (`write` / `read`), `routing_key`
//!
//! Only `user` carries the password; the other three trust that the broker logged the
//! user in through `user`. Nothing here logs a password. Anything unexpected, including
//! a body that does not parse, is answered `deny`, never an error status (RabbitMQ would
//! treat that as a failure of the backend).

use actix_web::{
    HttpResponse, Scope,
    error::InternalError,
    post,
    web::{self, Form},
};
use reddot_shared::{
    amqp::{BROADCAST_ROUTING_KEY, MQTT_EXCHANGE, mqtt_user_routing_key},
    auth,
    domain::UserId,
    metrics as m,
};
use serde::Deserialize;

use crate::state::GatewayState;

/// The queues RabbitMQ's MQTT plugin declares for a client: `mqtt-subscription-<client
/// id>qos0` and `…qos1`.
const SUBSCRIPTION_QUEUE_PREFIX: &str = "mqtt-subscription-";

/// `/mqtt/auth/{user,vhost,resource,topic}`, the four paths `auth_http.*_path` name.
pub fn service() -> Scope {
    // A body that is not a form is refused like any other bad request: with `deny`.
    let forms = web::FormConfig::default()
        .limit(16 * 1024)
        .error_handler(|err, _| InternalError::from_response(err, answer(Err("bad form"))).into());
    web::scope("/mqtt/auth")
        .app_data(forms)
        .service(user_path)
        .service(vhost_path)
        .service(resource_path)
        .service(topic_path)
}

/// A decision: `Err` carries why access is denied (for the debug log, never a secret).
pub type Decision = Result<(), &'static str>;

/// What every decision needs from the gateway.
pub struct Policy<'a> {
    pub jwt_secret: &'a str,
    /// `REDDOT_JWT_AUDIENCE`: the token must name it, as on the gateway's own routes.
    pub jwt_audience: Option<&'a str>,
    /// The vhost Reddot publishes in (`REDDOT_AMQP_URL`): MQTT clients get no other.
    pub vhost: &'a str,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UserForm {
    pub username: String,
    pub password: String,
    pub vhost: Option<String>,
    pub client_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct VhostForm {
    pub username: String,
    pub vhost: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResourceForm {
    pub username: String,
    pub vhost: String,
    pub resource: String,
    pub name: String,
    pub permission: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TopicForm {
    pub username: String,
    pub vhost: String,
    pub resource: String,
    pub name: String,
    pub permission: String,
    pub routing_key: String,
}

impl Policy<'_> {
    /// Login: the password is a valid gateway token whose `sub` is the username, asked
    /// for Reddot's vhost, by a client whose id belongs to the user.
    pub fn user(&self, form: &UserForm) -> Decision {
        let user = self.known_user(&form.username)?;
        if form.vhost.as_deref().is_some_and(|v| v != self.vhost) {
            return Err("not Reddot's vhost");
        }
        // Required: it makes this backend answer MQTT logins only, and a client id of
        // another user would take over (disconnect) that user's MQTT session.
        let client_id = form.client_id.as_deref().ok_or("no client id (not MQTT)")?;
        if !owns_client_id(&user, client_id) {
            return Err("client id is neither <user id> nor <user id>/<suffix>");
        }
        let verified = auth::verify(self.jwt_secret, &form.password, self.jwt_audience).map_err(
            |e| match e {
                auth::AuthError::Expired => "token expired",
                auth::AuthError::WrongAudience => "token for another audience",
                _ => "token invalid",
            },
        )?;
        if verified.user != user {
            return Err("token is for another user");
        }
        Ok(())
    }

    pub fn vhost(&self, form: &VhostForm) -> Decision {
        self.known_user(&form.username)?;
        self.own_vhost(&form.vhost)
    }

    /// Exactly what a subscriber needs: its own subscription queues (declare, bind,
    /// consume) and reading from `amq.topic`. No exchange may be written or configured,
    /// so nothing can be published.
    pub fn resource(&self, form: &ResourceForm) -> Decision {
        let user = self.known_user(&form.username)?;
        self.own_vhost(&form.vhost)?;
        match (form.resource.as_str(), form.permission.as_str()) {
            ("queue", "configure" | "write" | "read") => {
                let client_id =
                    subscription_client_id(&form.name).ok_or("not an MQTT subscription queue")?;
                if owns_client_id(&user, client_id) {
                    Ok(())
                } else {
                    Err("another client's queue")
                }
            }
            ("exchange", "read") if form.name == MQTT_EXCHANGE => Ok(()),
            ("exchange", _) => Err("exchanges are read-only for MQTT clients"),
            _ => Err("unknown resource or permission"),
        }
    }

    /// Reading the user's own routing key or the broadcasts' on `amq.topic`; writing never.
    pub fn topic(&self, form: &TopicForm) -> Decision {
        let user = self.known_user(&form.username)?;
        self.own_vhost(&form.vhost)?;
        if form.resource != "topic" || form.name != MQTT_EXCHANGE {
            return Err("not amq.topic");
        }
        if form.permission != "read" {
            return Err("MQTT clients never publish");
        }
        if form.routing_key == mqtt_user_routing_key(user.as_str())
            || form.routing_key == BROADCAST_ROUTING_KEY
        {
            Ok(())
        } else {
            Err("another user's topic or a wildcard")
        }
    }

    fn known_user(&self, username: &str) -> Result<UserId, &'static str> {
        UserId::parse(username).map_err(|_| "username is not a valid user id")
    }

    fn own_vhost(&self, vhost: &str) -> Decision {
        if vhost == self.vhost {
            Ok(())
        } else {
            Err("not Reddot's vhost")
        }
    }
}

/// Whether `client_id` is `<user id>` or `<user id>/<anything>` (`/` is not a user id
/// character, so no user can claim another's ids).
pub fn owns_client_id(user: &UserId, client_id: &str) -> bool {
    client_id
        .strip_prefix(user.as_str())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The client id in `mqtt-subscription-<client id>qos0|qos1`.
fn subscription_client_id(queue: &str) -> Option<&str> {
    let rest = queue.strip_prefix(SUBSCRIPTION_QUEUE_PREFIX)?;
    rest.strip_suffix("qos0")
        .or_else(|| rest.strip_suffix("qos1"))
}

fn policy(state: &GatewayState) -> Policy<'_> {
    Policy {
        jwt_secret: state.jwt_secret.expose(),
        jwt_audience: state.jwt_audience.as_deref(),
        vhost: &state.mqtt_vhost,
    }
}

fn answer(decision: Decision) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(if decision.is_ok() { "allow" } else { "deny" })
}

fn record(kind: &'static str, username: &str, decision: Decision) -> HttpResponse {
    let verdict = if decision.is_ok() { "allow" } else { "deny" };
    metrics::counter!(m::MQTT_AUTH, "kind" => kind, "decision" => verdict).increment(1);
    match decision {
        Ok(()) => tracing::debug!(kind, user = username, "mqtt auth: allow"),
        Err(reason) => tracing::debug!(kind, user = username, reason, "mqtt auth: deny"),
    }
    answer(decision)
}

#[post("/user")]
async fn user_path(state: web::Data<GatewayState>, form: Form<UserForm>) -> HttpResponse {
    record("user", &form.username, policy(&state).user(&form))
}

#[post("/vhost")]
async fn vhost_path(state: web::Data<GatewayState>, form: Form<VhostForm>) -> HttpResponse {
    record("vhost", &form.username, policy(&state).vhost(&form))
}

#[post("/resource")]
async fn resource_path(state: web::Data<GatewayState>, form: Form<ResourceForm>) -> HttpResponse {
    record("resource", &form.username, policy(&state).resource(&form))
}

#[post("/topic")]
async fn topic_path(state: web::Data<GatewayState>, form: Form<TopicForm>) -> HttpResponse {
    record("topic", &form.username, policy(&state).topic(&form))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-enough-length!!";
    const VHOST: &str = "reddot";

    fn policy() -> Policy<'static> {
        Policy {
            jwt_secret: SECRET,
            jwt_audience: None,
            vhost: VHOST,
        }
    }

    fn token(user: &str, ttl: i64) -> anyhow::Result<String> {
        Ok(auth::mint(SECRET, &UserId::parse(user)?, ttl, None)?.0)
    }

    fn login(username: &str, password: String, client_id: Option<&str>) -> UserForm {
        UserForm {
            username: username.into(),
            password,
            vhost: Some(VHOST.into()),
            client_id: client_id.map(str::to_owned),
        }
    }

    fn resource(user: &str, kind: &str, name: &str, permission: &str) -> ResourceForm {
        ResourceForm {
            username: user.into(),
            vhost: VHOST.into(),
            resource: kind.into(),
            name: name.into(),
            permission: permission.into(),
        }
    }

    fn topic(user: &str, permission: &str, routing_key: &str) -> TopicForm {
        TopicForm {
            username: user.into(),
            vhost: VHOST.into(),
            resource: "topic".into(),
            name: MQTT_EXCHANGE.into(),
            permission: permission.into(),
            routing_key: routing_key.into(),
        }
    }

    #[test]
    fn a_user_logs_in_with_her_own_token_and_client_id() -> anyhow::Result<()> {
        let p = policy();
        assert_eq!(
            p.user(&login("alice", token("alice", 60)?, Some("alice"))),
            Ok(())
        );
        assert_eq!(
            p.user(&login("a.b", token("a.b", 60)?, Some("a.b/tab-1"))),
            Ok(())
        );
        assert_eq!(
            p.user(&login(
                "org:carol",
                token("org:carol", 60)?,
                Some("org:carol/x")
            )),
            Ok(())
        );
        Ok(())
    }

    #[test]
    fn logins_with_a_bad_token_or_someone_elses_are_denied() -> anyhow::Result<()> {
        let p = policy();
        let cases = [
            (
                "bob's token",
                login("alice", token("bob", 60)?, Some("alice")),
            ),
            (
                "expired",
                login("alice", token("alice", -120)?, Some("alice")),
            ),
            ("garbage", login("alice", "not-a-jwt".into(), Some("alice"))),
            ("empty", login("alice", String::new(), Some("alice"))),
            (
                "bad username",
                login("not valid!", token("alice", 60)?, Some("x")),
            ),
        ];
        for (what, form) in cases {
            assert!(p.user(&form).is_err(), "{what}");
        }
        let wrong_secret = auth::mint(
            "another-secret-entirely-0123456",
            &UserId::parse("alice")?,
            60,
            None,
        )?
        .0;
        assert!(
            p.user(&login("alice", wrong_secret, Some("alice")))
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn with_an_audience_set_a_login_needs_a_token_naming_it() -> anyhow::Result<()> {
        let p = Policy {
            jwt_audience: Some("reddot"),
            ..policy()
        };
        let alice = UserId::parse("alice")?;
        let for_reddot = auth::mint(SECRET, &alice, 60, Some("reddot"))?.0;
        assert_eq!(p.user(&login("alice", for_reddot, Some("alice"))), Ok(()));
        for audience in [None, Some("app")] {
            let token = auth::mint(SECRET, &alice, 60, audience)?.0;
            assert_eq!(
                p.user(&login("alice", token, Some("alice"))),
                Err("token for another audience"),
                "{audience:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn logins_need_an_own_client_id_and_reddots_vhost() -> anyhow::Result<()> {
        let p = policy();
        let t = token("alice", 60)?;
        for client_id in [
            None,
            Some("bob"),
            Some("alice2"),
            Some("alicex/1"),
            Some(""),
        ] {
            assert!(
                p.user(&login("alice", t.clone(), client_id)).is_err(),
                "{client_id:?}"
            );
        }
        let mut other_vhost = login("alice", t, Some("alice/1"));
        other_vhost.vhost = Some("/".into());
        assert!(p.user(&other_vhost).is_err());
        Ok(())
    }

    #[test]
    fn only_reddots_vhost_is_open() {
        let p = policy();
        let form = |vhost: &str| VhostForm {
            username: "alice".into(),
            vhost: vhost.into(),
        };
        assert_eq!(p.vhost(&form(VHOST)), Ok(()));
        assert!(p.vhost(&form("/")).is_err());
    }

    #[test]
    fn a_subscriber_may_use_its_own_queues_and_read_amq_topic_only() {
        let p = policy();
        for permission in ["configure", "write", "read"] {
            for queue in [
                "mqtt-subscription-aliceqos0",
                "mqtt-subscription-alice/t1qos1",
            ] {
                assert_eq!(
                    p.resource(&resource("alice", "queue", queue, permission)),
                    Ok(()),
                    "{queue} {permission}"
                );
            }
            for queue in [
                "mqtt-subscription-bobqos1",
                "mqtt-subscription-alicebobqos1",
                "mqtt-subscription-alice/t1",
                "reddot.gw.node.1",
            ] {
                assert!(
                    p.resource(&resource("alice", "queue", queue, permission))
                        .is_err(),
                    "{queue} {permission}"
                );
            }
        }
        assert_eq!(
            p.resource(&resource("alice", "exchange", "amq.topic", "read")),
            Ok(())
        );
        for (name, permission) in [
            ("amq.topic", "write"),
            ("amq.topic", "configure"),
            ("reddot.direct", "read"),
            ("reddot.broadcast", "read"),
        ] {
            assert!(
                p.resource(&resource("alice", "exchange", name, permission))
                    .is_err(),
                "{name} {permission}"
            );
        }
        let mut elsewhere = resource("alice", "exchange", "amq.topic", "read");
        elsewhere.vhost = "/".into();
        assert!(p.resource(&elsewhere).is_err());
    }

    #[test]
    fn a_subscriber_reads_her_topic_and_broadcasts_and_never_writes() {
        let p = policy();
        assert_eq!(
            p.topic(&topic("alice", "read", "reddot.users.alice")),
            Ok(())
        );
        assert_eq!(p.topic(&topic("a.b", "read", "reddot.users.a.b")), Ok(()));
        assert_eq!(p.topic(&topic("alice", "read", "reddot.broadcast")), Ok(()));
        for key in [
            "reddot.users.bob",
            "reddot.users.#",
            "reddot.users.*",
            "reddot.#",
            "#",
            "reddot.users.alice.#",
            "reddot.users.a",
        ] {
            assert!(p.topic(&topic("alice", "read", key)).is_err(), "{key}");
        }
        for key in ["reddot.users.alice", "reddot.broadcast"] {
            assert!(p.topic(&topic("alice", "write", key)).is_err(), "{key}");
        }
        let mut other_exchange = topic("alice", "read", "reddot.users.alice");
        other_exchange.name = "reddot.direct".into();
        assert!(p.topic(&other_exchange).is_err());
    }
}
