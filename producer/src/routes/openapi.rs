//! `GET /openapi.json`: the producer API described from the handlers' annotations. The
//! schema types here document the wire format; validation lives in the handlers.

use actix_web::{HttpResponse, get};
use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Reddot producer API", description = "Send in-app notifications to users or to everyone."),
    paths(
        super::create_notification::create_notification,
        super::mint_token::mint_token,
        super::user_views::user_notifications,
        super::user_views::user_unread,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics_text,
    ),
    components(schemas(CreateNotification, Recipients, CreatedResponse, MintToken, TokenResponse, ErrorResponse, ErrorBody)),
    modifiers(&ApiKeyAuth)
)]
pub struct ApiDoc;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "api_key",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// Either `{"users": [...]}` (1–10,000 distinct user ids) or `{"all": true}`.
#[derive(Serialize, ToSchema)]
pub struct Recipients {
    pub users: Option<Vec<String>>,
    pub all: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct CreateNotification {
    pub to: Recipients,
    /// `[a-z0-9_.-]{1,64}`, default `notice`.
    pub kind: Option<String>,
    /// 1–200 characters.
    pub title: String,
    /// At most 10,000 characters.
    pub body: Option<String>,
    /// A JSON object of at most 16 KiB.
    pub data: Option<serde_json::Value>,
    pub sender: Option<String>,
    /// RFC 3339, in the future.
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedResponse {
    pub id: i64,
    pub created_at: String,
    /// `user` or `all`.
    pub audience: String,
    /// Distinct recipients; null for a broadcast.
    pub recipients: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct MintToken {
    pub user_id: String,
    /// 60–86,400, default 3,600.
    pub ttl_seconds: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable snake_case code.
    pub code: String,
    pub message: String,
    /// The offending field, when one is to blame.
    pub field: Option<String>,
    pub hint: String,
}

#[get("/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
