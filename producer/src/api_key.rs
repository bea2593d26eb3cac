//! The authenticated backend, as an extractor: a handler that takes [`Backend`] cannot
//! run without a valid API key.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use reddot_shared::{
    config::Secret,
    error::ApiError,
    http::{bearer, constant_time_eq},
};
use sha2::{Digest, Sha256};

/// The API keys this producer accepts.
#[derive(Clone)]
pub struct ApiKeys(pub Vec<Secret>);

/// A backend that presented a valid API key.
#[derive(Debug, Clone)]
pub struct Backend {
    /// A hash of the key: scopes Idempotency-Keys without storing the key.
    pub scope: String,
}

impl FromRequest for Backend {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Backend, ApiError> {
    let keys = req
        .app_data::<web::Data<ApiKeys>>()
        .ok_or_else(ApiError::internal)?;
    let presented = bearer(req).ok_or_else(|| ApiError::unauthorized("missing API key"))?;
    // Compare against every key so that timing says nothing about which one matched.
    let matched = keys.0.iter().fold(false, |found, key| {
        constant_time_eq(key.expose().as_bytes(), presented.as_bytes()) | found
    });
    if !matched {
        return Err(ApiError::unauthorized("invalid API key"));
    }
    let digest = Sha256::digest(presented.as_bytes());
    Ok(Backend {
        scope: hex::encode(&digest[..16]),
    })
}
