//! Read-state changes requested over any transport (HTTP routes, WebSocket commands):
//! write them, then announce them so every session of the user updates its badge.

use reddot_shared::{
    domain::UserId,
    error::ApiError,
    store::read_state::{self, Change},
    time::now_ms,
};

use crate::state::GatewayState;

/// Ids in one read request, at most (HTTP and WebSocket alike).
pub const MAX_READ_IDS: usize = 1000;
/// What a read request with too few or too many ids is told.
pub const READ_IDS_RULE: &str = "ids must hold 1-1000 notification ids";

pub async fn mark_read(state: &GatewayState, user: &UserId, ids: &[i64]) -> Result<u64, ApiError> {
    match read_state::mark_read(&state.db, user, ids, now_ms()).await? {
        Change::Done(n) => {
            if n > 0 {
                state.unread_cache.invalidate(user);
                state.publisher.read_state_changed(user).await;
            }
            Ok(n)
        }
        Change::NotVisible(id) => Err(ApiError::not_found(format!("notification {id} not found"))),
    }
}

pub async fn mark_all_read(state: &GatewayState, user: &UserId) -> Result<u64, ApiError> {
    let n = read_state::mark_all_read(&state.db, user, now_ms()).await?;
    if n > 0 {
        state.unread_cache.invalidate(user);
        state.publisher.read_state_changed(user).await;
    }
    Ok(n)
}

pub async fn delete(state: &GatewayState, user: &UserId, id: i64) -> Result<(), ApiError> {
    match read_state::delete(&state.db, user, id, now_ms()).await? {
        Change::Done(_) => {
            state.unread_cache.invalidate(user);
            state.publisher.read_state_changed(user).await;
            Ok(())
        }
        Change::NotVisible(id) => Err(ApiError::not_found(format!("notification {id} not found"))),
    }
}
