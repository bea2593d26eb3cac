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
    components(schemas(CreateNotification, Recipients, ToUsers, ToAll, CreatedResponse, MintToken, TokenResponse,
        Notification, InboxItem, InboxPage, UnreadView, Health, Readiness, ErrorResponse, ErrorBody)),
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

/// Who gets the notification: listed users or everyone.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Recipients {
    Users(ToUsers),
    All(ToAll),
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToUsers {
    /// User ids, `[A-Za-z0-9_.:@-]{1,128}`; duplicates are removed (the limit counts
    /// distinct ids).
    #[schema(min_items = 1, max_items = 10000)]
    pub users: Vec<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToAll {
    /// Must be `true`: a broadcast, visible to every user until `expires_at`.
    pub all: bool,
}

/// Unknown fields are refused with a 400 naming them; no string may hold a NUL.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNotification {
    pub to: Recipients,
    /// Default `notice`.
    #[schema(pattern = "^[a-z0-9_.-]{1,64}$", min_length = 1, max_length = 64)]
    pub kind: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    #[schema(max_length = 10000)]
    pub body: Option<String>,
    /// A JSON object of at most 16 KiB serialized.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    #[schema(max_length = 256)]
    pub sender: Option<String>,
    /// In the future; the notification is never listed, counted or pushed after it.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedResponse {
    pub id: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `user` or `all`.
    pub audience: String,
    /// Distinct recipients; null for a broadcast.
    #[schema(required = true)]
    pub recipients: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    /// `[A-Za-z0-9_.:@-]{1,128}`.
    #[schema(pattern = "^[A-Za-z0-9_.:@-]{1,128}$")]
    pub user_id: String,
    /// Default 3,600.
    #[schema(minimum = 60, maximum = 86400)]
    pub ttl_seconds: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// One notification, as every transport and listing carries it.
#[derive(Serialize, ToSchema)]
pub struct Notification {
    pub id: i64,
    pub kind: String,
    pub title: String,
    pub body: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    #[schema(required = true)]
    pub sender: Option<String>,
    /// `user` or `all`.
    pub audience: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct InboxItem {
    #[serde(flatten)]
    pub notification: Notification,
    pub read: bool,
}

/// A page of a user's inbox, newest first.
#[derive(Serialize, ToSchema)]
pub struct InboxPage {
    pub items: Vec<InboxItem>,
    /// Pass as `before` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_before: Option<i64>,
    /// The newest id visible to the user (0 if none).
    pub cursor: i64,
}

#[derive(Serialize, ToSchema)]
pub struct UnreadView {
    pub count: i64,
    pub by_kind: std::collections::BTreeMap<String, i64>,
    /// The newest id visible to the user (0 if none).
    pub latest_id: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Each dependency; only the database decides readiness.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok` or `down`.
    pub database: String,
    /// `ok` or `down`; never fails readiness (the outbox absorbs an outage).
    pub rabbitmq: String,
    /// Notifications committed but not yet published; null when the database is down.
    #[schema(required = true)]
    pub outbox_lag: Option<i64>,
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
