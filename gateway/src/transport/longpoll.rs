//! `GET /v1/poll?cursor=N&timeout=S`: long polling. Answers at once if anything newer
//! than the cursor is visible, else holds the request (≤ 60 s) until a notification
//! for the user reaches this node — the request joins the hub like any session, so it
//! is woken by the broker, never by polling the database — and answers `204` on timeout.
//! A read or delete elsewhere answers the hold with the new count and no notifications.
//! A hold ends when the token does (`401`): no session outlives its token.
//!
//! A read made between two polls wakes neither. So answers with a count carry the
//! `ETag` of `/v1/unread`, and a poll whose `If-None-Match` no longer matches the
//! user's count is answered at once with the new one (as a read during the hold is).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, get, http::header, web};
use reddot_shared::{domain::Notification, error::ApiError, store::inbox, time::now_ms};
use serde::Serialize;

use crate::{
    auth::{AuthUser, query_param},
    hub::HubMsg,
    state::GatewayState,
    unread_cache::View,
};

pub const MAX_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_TIMEOUT_SECS: u64 = 25;
/// Notifications per answer at most; the client asks again at once with the new cursor.
pub const MAX_BATCH: u64 = 100;

#[get(
    "/v1/poll",
    wrap = "actix_web::middleware::from_fn(crate::connect_limit::limit_connects)"
)]
pub async fn poll(
    auth: AuthUser,
    req: HttpRequest,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    // `cursor` is long polling's own name; the resume forms of every transport
    // (`Last-Event-ID`, `?last_event_id=`) work here too.
    let cursor =
        match query_param(&req, "cursor").filter(|c| !c.is_empty()) {
            Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::field("cursor", "cursor must be a non-negative integer")
            })?),
            None => super::resume_cursor(&req)?,
        };
    let timeout = match query_param(&req, "timeout").filter(|t| !t.is_empty()) {
        Some(t) => t
            .parse::<f64>()
            .ok()
            .filter(|t| *t >= 0.0)
            .ok_or_else(|| ApiError::field("timeout", "timeout is a number of seconds"))?,
        None => DEFAULT_TIMEOUT_SECS as f64,
    }
    .min(MAX_TIMEOUT_SECS as f64);
    let ctx = &state.sessions;
    // Join (and so bind) before reading: anything committed after the read wakes us.
    let membership = ctx.hub.join_long_poll(&auth.user, 16).map_err(|e| {
        ApiError::new(
            reddot_shared::error::ErrorCode::TooManyRequests,
            e.to_string(),
        )
    })?;
    if !membership.binding.is_bound() {
        let _ = tokio::time::timeout(Duration::from_secs(3), membership.binding.wait()).await;
    }
    let cursor = match cursor {
        Some(c) => c,
        None => inbox::latest_id(&ctx.db, &auth.user, now_ms()).await?,
    };
    let hold = Duration::from_secs_f64(timeout);
    let token_left =
        Duration::from_millis(u64::try_from(auth.expires_at * 1000 - now_ms()).unwrap_or(0));
    let deadline = tokio::time::Instant::now() + hold.min(token_left);
    let held_out = || {
        if token_left < hold {
            Err(ApiError::unauthorized(
                "the token expired while the poll was held; poll again with a fresh one",
            ))
        } else {
            Ok(HttpResponse::NoContent().finish())
        }
    };
    // Checked after joining: a read committed after this check wakes the hold.
    let mut read_state_changed = match req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        Some(tag) => state
            .unread_cache
            .check(&auth.user, Some(tag))
            .await?
            .is_err(),
        None => false,
    };
    loop {
        if let Some(answer) = answer(&state, &auth, cursor).await? {
            return Ok(answer);
        }
        if read_state_changed {
            // A read or delete on another tab or device: the long-poll form of the
            // `unread` the streams push — no notifications, the same cursor.
            let unread = inbox::unread(&ctx.db, &auth.user, now_ms()).await?;
            return Ok(Answer {
                reset: None,
                notifications: &[],
                cursor,
                unread: &unread,
            }
            .respond());
        }
        let woke = tokio::select! {
            msg = membership.rx.recv_async() => msg.ok(),
            () = tokio::time::sleep_until(deadline) => return held_out(),
            () = ctx.shutdown.cancelled() => return Ok(HttpResponse::NoContent().finish()),
        };
        match woke {
            Some(HubMsg::Notification(n)) if n.id <= cursor => continue,
            Some(HubMsg::ReadStateChanged) => read_state_changed = true,
            Some(HubMsg::Close) | None => return Ok(HttpResponse::NoContent().finish()),
            Some(_) => {}
        }
    }
}

/// The answer if anything after `cursor` is visible: up to [`MAX_BATCH`], or `reset`
/// when more than the replay cap was missed.
async fn answer(
    state: &GatewayState,
    auth: &AuthUser,
    cursor: i64,
) -> Result<Option<HttpResponse>, ApiError> {
    let ctx = &state.sessions;
    let now = now_ms();
    let cap = ctx.replay_cap as u64;
    let probe = inbox::replay(&ctx.db, &auth.user, cursor, (cap + 1).max(MAX_BATCH), now).await?;
    if probe.is_empty() {
        return Ok(None);
    }
    let unread = inbox::unread(&ctx.db, &auth.user, now).await?;
    if probe.len() as u64 > cap {
        return Ok(Some(
            Answer {
                reset: Some(true),
                notifications: &[],
                // The newest visible id, as `/v1/unread`'s `latest_id`: polling on from
                // it misses nothing and skips what the reset told the client to reload.
                cursor: unread.latest_id,
                unread: &unread,
            }
            .respond(),
        ));
    }
    let batch = &probe[..probe.len().min(MAX_BATCH as usize)];
    let next = batch.last().map_or(cursor, |n| n.id);
    Ok(Some(
        Answer {
            reset: None,
            notifications: batch,
            cursor: next,
            unread: &unread,
        }
        .respond(),
    ))
}

/// A long-poll answer. A struct rather than `json!`, which would sort each
/// notification's keys: the notification JSON is the same on every transport.
#[derive(Serialize)]
struct Answer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reset: Option<bool>,
    notifications: &'a [Notification],
    cursor: i64,
    unread: &'a inbox::Unread,
}

impl Answer<'_> {
    /// 200 with the `ETag` `/v1/unread` would give this count, for the next poll's
    /// `If-None-Match`.
    fn respond(&self) -> HttpResponse {
        HttpResponse::Ok()
            .insert_header((header::ETAG, View::new(self.unread).etag))
            .json(self)
    }
}
