//! Gateway tokens: HS256 JWTs whose `sub` is the user id and whose `exp` is required.
//! The producer mints them (`POST /api/v1/tokens`), the gateway verifies them.
//!
//! A deployment whose secret also signs other tokens (the app's own sessions, say) sets
//! an audience (`REDDOT_JWT_AUDIENCE`): the gateway then takes only tokens whose `aud`
//! names it, so no other token of that secret opens a stream, and the producer mints
//! with it.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use crate::domain::UserId;

/// Clock skew tolerated between the minting backend and the gateway.
pub const LEEWAY_SECS: u64 = 30;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The latest `exp` taken at its word (9999-12-31): a later one, even `i64::MAX`, means
/// this, so that the gateway's arithmetic in milliseconds cannot overflow.
pub const MAX_EXP: i64 = 253_402_300_799;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// A verified token: who it is for and when it stops being valid.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user: UserId,
    /// Unix seconds, at most [`MAX_EXP`].
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token is too long")]
    TooLong,
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the token's sub is not a valid user id")]
    BadSubject,
    #[error("the token is not for this audience")]
    WrongAudience,
    #[error("could not sign the token")]
    Sign,
}

/// Signs a token for `user` valid for `ttl_secs`, naming `audience` if given; returns it
/// with its expiry (Unix seconds).
pub fn mint(
    secret: &str,
    user: &UserId,
    ttl_secs: i64,
    audience: Option<&str>,
) -> Result<(String, i64), AuthError> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user.as_str().to_owned(),
        exp: now + ttl_secs,
        iat: Some(now),
        nbf: None,
        aud: audience.map(str::to_owned),
    };
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|_| AuthError::Sign)?;
    Ok((token, claims.exp))
}

/// The claims the gateway reads. `exp` and `nbf` are JSON numbers, fractions allowed
/// (RFC 7519's NumericDate: a token minted with `time.time() + 60` is valid), which is
/// why they are checked here rather than by `jsonwebtoken`, whose checks want integers.
#[derive(Debug, Deserialize)]
struct Presented {
    sub: String,
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    aud: Option<Aud>,
}

/// RFC 7519's `aud`: one string, or an array of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Aud {
    One(String),
    Many(Vec<String>),
}

impl Aud {
    fn names(&self, audience: &str) -> bool {
        match self {
            Aud::One(a) => a == audience,
            Aud::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

/// Verifies signature (HS256 only), `exp` and `nbf` with [`LEEWAY_SECS`], `sub`, and,
/// when `audience` is given, that `aud` names it (without one, `aud` is not read).
pub fn verify(secret: &str, token: &str, audience: Option<&str>) -> Result<Verified, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLong);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["sub"]);
    let claims = decode::<Presented>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| AuthError::Invalid(format!("{:?}", e.kind())))?
    .claims;
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let leeway = LEEWAY_SECS as f64;
    if !claims.exp.is_finite() || claims.nbf.is_some_and(|nbf| !nbf.is_finite()) {
        return Err(AuthError::Invalid("a time that is not a number".into()));
    }
    if claims.exp < now - leeway {
        return Err(AuthError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(AuthError::Invalid("ImmatureSignature".into()));
    }
    if let Some(audience) = audience
        && !claims.aud.as_ref().is_some_and(|aud| aud.names(audience))
    {
        return Err(AuthError::WrongAudience);
    }
    let user = UserId::parse(&claims.sub).map_err(|_| AuthError::BadSubject)?;
    Ok(Verified {
        user,
        // Rounded down, so a session never outlives its token; `as` saturates.
        expires_at: (claims.exp.floor() as i64).min(MAX_EXP),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-enough-length!!";

    #[test]
    fn a_minted_token_verifies_for_its_user() -> anyhow::Result<()> {
        let alice = UserId::parse("alice")?;
        let (token, exp) = mint(SECRET, &alice, 60, None)?;
        let v = verify(SECRET, &token, None)?;
        assert_eq!(v.user, alice);
        assert_eq!(v.expires_at, exp);
        assert!(verify("another-secret-entirely-0123456", &token, None).is_err());
        Ok(())
    }

    #[test]
    fn expired_tokens_fail_after_the_leeway() -> anyhow::Result<()> {
        let alice = UserId::parse("alice")?;
        let (inside, _) = mint(SECRET, &alice, -10, None)?;
        assert!(
            verify(SECRET, &inside, None).is_ok(),
            "10 s past exp is within the 30 s leeway"
        );
        let (outside, _) = mint(SECRET, &alice, -60, None)?;
        assert!(matches!(
            verify(SECRET, &outside, None),
            Err(AuthError::Expired)
        ));
        Ok(())
    }

    #[test]
    fn an_exp_past_year_9999_counts_as_year_9999() -> anyhow::Result<()> {
        let claims = Claims {
            sub: "alice".into(),
            exp: i64::MAX,
            iat: None,
            nbf: None,
            aud: None,
        };
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = encode(&Header::new(Algorithm::HS256), &claims, &key)?;
        let v = verify(SECRET, &token, None)?;
        assert_eq!(v.expires_at, MAX_EXP);
        assert!(v.expires_at.checked_mul(1000).is_some());
        Ok(())
    }

    /// Signs arbitrary claims, as a backend with its own JWT library would.
    fn sign(claims: &serde_json::Value) -> anyhow::Result<String> {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        Ok(encode(&Header::new(Algorithm::HS256), claims, &key)?)
    }

    #[test]
    fn times_with_fractions_are_valid_numeric_dates() -> anyhow::Result<()> {
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        let token = sign(&serde_json::json!({
            "sub": "alice", "exp": now + 100.5, "iat": now, "nbf": now - 0.25
        }))?;
        let v = verify(SECRET, &token, None)?;
        assert_eq!(v.user.as_str(), "alice");
        assert_eq!(v.expires_at, (now + 100.5).floor() as i64);
        let expired = sign(&serde_json::json!({"sub": "alice", "exp": now - 60.5}))?;
        assert!(matches!(
            verify(SECRET, &expired, None),
            Err(AuthError::Expired)
        ));
        let early =
            sign(&serde_json::json!({"sub": "alice", "exp": now + 600.0, "nbf": now + 60.5}))?;
        assert!(matches!(
            verify(SECRET, &early, None),
            Err(AuthError::Invalid(_))
        ));
        Ok(())
    }

    #[test]
    fn a_token_without_exp_or_sub_or_with_a_text_exp_is_invalid() -> anyhow::Result<()> {
        let exp = chrono::Utc::now().timestamp() + 600;
        for claims in [
            serde_json::json!({"sub": "alice"}),
            serde_json::json!({"exp": exp}),
            serde_json::json!({"sub": "alice", "exp": exp.to_string()}),
            serde_json::json!({"sub": "alice", "exp": null}),
        ] {
            let token = sign(&claims)?;
            assert!(
                matches!(verify(SECRET, &token, None), Err(AuthError::Invalid(_))),
                "{claims}"
            );
        }
        Ok(())
    }

    #[test]
    fn with_an_audience_only_tokens_naming_it_are_valid() -> anyhow::Result<()> {
        let alice = UserId::parse("alice")?;
        let exp = chrono::Utc::now().timestamp() + 600;
        let (minted, _) = mint(SECRET, &alice, 60, Some("reddot"))?;
        assert_eq!(verify(SECRET, &minted, Some("reddot"))?.user, alice);
        let listed =
            sign(&serde_json::json!({"sub": "alice", "exp": exp, "aud": ["app", "reddot"]}))?;
        assert_eq!(verify(SECRET, &listed, Some("reddot"))?.user, alice);
        for claims in [
            serde_json::json!({"sub": "alice", "exp": exp}),
            serde_json::json!({"sub": "alice", "exp": exp, "aud": "app"}),
            serde_json::json!({"sub": "alice", "exp": exp, "aud": ["app"]}),
            serde_json::json!({"sub": "alice", "exp": exp, "aud": "Reddot"}),
        ] {
            let token = sign(&claims)?;
            assert!(
                matches!(
                    verify(SECRET, &token, Some("reddot")),
                    Err(AuthError::WrongAudience)
                ),
                "{claims}"
            );
            // Without an audience set, `aud` is not read at all.
            assert!(verify(SECRET, &token, None).is_ok(), "{claims}");
        }
        Ok(())
    }
}
