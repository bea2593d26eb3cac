//! What a user sees: replay after a cursor, the unread count, the newest visible id.
//! "Visible" everywhere means: targeted to the user or a broadcast, not expired, not
//! deleted by the user. Broadcasts have no per-user row until read or deleted (fan-out
//! on read), so every query has a targeted half and a broadcast half.

use std::collections::{BTreeMap, HashMap};

use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, FromQueryResult, IsolationLevel,
    TransactionOptions, TransactionTrait,
};
use serde::Serialize;

use super::{NOTIFICATION_COLUMNS, NotificationRow, StoreError, is_postgres, state, stmt};
use crate::{
    domain::{Kind, Notification, UserId},
    error::{ApiError, ErrorCode},
};
use actix_web::web;

/// The unread badge: `count` covers every notification with id ≤ `as_of`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Unread {
    pub count: i64,
    pub by_kind: BTreeMap<String, i64>,
    /// The newest id that concerns the user, visible or not: a client's badge is `count`
    /// plus what it received above it. Not the newest *visible* id: after the user
    /// deleted her newest notification that would fall below one she received, and
    /// her badge would count it again.
    pub as_of: i64,
    /// The newest id visible to the user (short polling's `latest_id`), ≤ `as_of`.
    #[serde(skip)]
    pub latest_id: i64,
    /// When the first counted notification expires (Unix ms): the count is stale then.
    #[serde(skip)]
    pub next_expiry: Option<i64>,
}

const TARGETED_VISIBLE: &str = "r.user_id = $1 AND r.broadcast = 0 AND r.state < 2 AND (r.expires_at IS NULL OR r.expires_at > $2)";
const BROADCAST_VISIBLE: &str = "n.audience = 'all' AND (n.expires_at IS NULL OR n.expires_at > $2) \
     AND NOT EXISTS (SELECT 1 FROM recipients d WHERE d.user_id = $1 AND d.notification_id = n.id AND d.state = 2)";

/// Visible notifications with id > `after`, in id order, at most `limit`.
pub async fn replay(
    db: &impl ConnectionTrait,
    user: &UserId,
    after: i64,
    limit: u64,
    now_ms: i64,
) -> Result<Vec<Notification>, StoreError> {
    // One statement, so one snapshot: as two, a targeted notification committed between
    // them could be missed while a later broadcast is returned, and the session would
    // then skip it as already sent.
    let rows = NotificationRow::find_by_statement(stmt(
        db,
        &format!(
            "SELECT * FROM (SELECT {NOTIFICATION_COLUMNS} FROM recipients r JOIN notifications n ON n.id = r.notification_id \
             WHERE {TARGETED_VISIBLE} AND r.notification_id > $3 ORDER BY r.notification_id LIMIT $4) t \
             UNION ALL \
             SELECT * FROM (SELECT {NOTIFICATION_COLUMNS} FROM notifications n WHERE {BROADCAST_VISIBLE} AND n.id > $3 \
             ORDER BY n.id LIMIT $4) b \
             ORDER BY id LIMIT $4"
        ),
        [
            user.as_str().into(),
            now_ms.into(),
            after.into(),
            (limit as i64).into(),
        ],
    ))
    .all(db)
    .await?;
    rows.into_iter().map(Notification::try_from).collect()
}

/// A scalar subquery: the newest id visible to user `$1` at time `$2` (NULL if none).
fn newest_visible() -> String {
    format!(
        "(SELECT MAX(id) FROM (\
         SELECT MAX(r.notification_id) AS id FROM recipients r WHERE {TARGETED_VISIBLE} \
         UNION ALL \
         SELECT MAX(n.id) AS id FROM notifications n WHERE {BROADCAST_VISIBLE}) t)"
    )
}

/// The newest id visible to `user`, 0 if none.
pub async fn latest_id(
    db: &impl ConnectionTrait,
    user: &UserId,
    now_ms: i64,
) -> Result<i64, StoreError> {
    #[derive(FromQueryResult)]
    struct Latest {
        id: Option<i64>,
    }
    // One statement (one snapshot), for the reason given in `replay`.
    let latest = Latest::find_by_statement(stmt(
        db,
        &format!("SELECT {} AS id", newest_visible()),
        [user.as_str().into(), now_ms.into()],
    ))
    .one(db)
    .await?
    .and_then(|l| l.id);
    Ok(latest.unwrap_or(0))
}

/// The unread count of `user` with its split by kind, as of the newest id that concerns
/// her (see [`Unread::as_of`]).
pub async fn unread(
    db: &impl ConnectionTrait,
    user: &UserId,
    now_ms: i64,
) -> Result<Unread, StoreError> {
    #[derive(FromQueryResult)]
    struct Bounds {
        visible: Option<i64>,
        mine: Option<i64>,
        broadcast: Option<i64>,
    }
    // One statement (one snapshot), so that `latest_id` ≤ `as_of`; the count below is
    // bounded by `as_of`, so what commits after this read is in neither.
    let bounds = Bounds::find_by_statement(stmt(
        db,
        &format!(
            "SELECT {} AS visible, \
             (SELECT MAX(m.notification_id) FROM recipients m WHERE m.user_id = $1) AS mine, \
             (SELECT MAX(b.id) FROM notifications b WHERE b.audience = 'all') AS broadcast",
            newest_visible()
        ),
        [user.as_str().into(), now_ms.into()],
    ))
    .one(db)
    .await?;
    let (latest_id, as_of) = bounds.map_or((0, 0), |b| {
        let visible = b.visible.unwrap_or(0);
        let concerning = b.mine.unwrap_or(0).max(b.broadcast.unwrap_or(0));
        (visible, visible.max(concerning))
    });
    let rows = db
        .query_all_raw(stmt(
            db,
            &format!(
                "SELECT r.kind AS kind, COUNT(*) AS n, MIN(r.expires_at) AS e FROM recipients r \
                 WHERE r.user_id = $1 AND r.state = {unread} AND r.broadcast = 0 AND r.notification_id <= $3 \
                 AND (r.expires_at IS NULL OR r.expires_at > $2) GROUP BY r.kind \
                 UNION ALL \
                 SELECT n.kind AS kind, COUNT(*) AS n, MIN(n.expires_at) AS e FROM notifications n \
                 WHERE n.audience = 'all' AND n.id <= $3 AND (n.expires_at IS NULL OR n.expires_at > $2) \
                 AND NOT EXISTS (SELECT 1 FROM recipients d WHERE d.user_id = $1 AND d.notification_id = n.id) GROUP BY n.kind",
                unread = state::UNREAD
            ),
            [user.as_str().into(), now_ms.into(), as_of.into()],
        ))
        .await?;
    let mut out = Unread {
        as_of,
        latest_id,
        ..Default::default()
    };
    for row in rows {
        let kind: String = row.try_get("", "kind")?;
        let n: i64 = row.try_get("", "n")?;
        let expires: Option<i64> = row.try_get("", "e")?;
        out.count += n;
        *out.by_kind.entry(kind).or_default() += n;
        out.next_expiry = match (out.next_expiry, expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(out)
}

/// The highest notification ids that concern `user`: her newest recipient row and the
/// newest broadcast. Two index lookups. Ids only grow, so while neither moved nothing
/// new was committed for her (reading or deleting a broadcast adds a row, which moves
/// it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub targeted: Option<i64>,
    pub broadcast: Option<i64>,
}

pub async fn watermark(db: &impl ConnectionTrait, user: &UserId) -> Result<Watermark, StoreError> {
    watermarks(db, &[user.as_str()])
        .await?
        .remove(user.as_str())
        .ok_or_else(|| StoreError::Corrupt("watermark query returned no row".into()))
}

/// [`watermark`] for several users in one statement: one round trip however many
/// polls are waiting. Users with no row still get an entry (`targeted: None`).
pub async fn watermarks(
    db: &impl ConnectionTrait,
    users: &[&str],
) -> Result<HashMap<String, Watermark>, StoreError> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    // A derived table of the users, each with her own MAX lookup: `GROUP BY` over an
    // `IN` list would walk every row of every user instead of one index edge each.
    let mut ids = String::with_capacity(users.len() * 24);
    for i in 1..=users.len() {
        if i > 1 {
            ids.push_str(" UNION ALL ");
        }
        ids.push_str(&format!("SELECT CAST(${i} AS TEXT) AS id"));
    }
    let rows = db
        .query_all_raw(stmt(
            db,
            &format!(
                "SELECT u.id AS user_id,                  (SELECT MAX(notification_id) FROM recipients r WHERE r.user_id = u.id) AS targeted,                  (SELECT MAX(id) FROM notifications WHERE audience = 'all') AS broadcast                  FROM ({ids}) u"
            ),
            users.iter().map(|u| (*u).into()),
        ))
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        out.insert(
            row.try_get::<String>("", "user_id")?,
            Watermark {
                targeted: row.try_get("", "targeted")?,
                broadcast: row.try_get("", "broadcast")?,
            },
        );
    }
    Ok(out)
}

/// The next moment something the user may see expires, which changes her counts or her
/// `latest_id`: a cached unread view is good until then. Deliberately broad (read rows
/// and every broadcast count too): expiring early only costs a recomputation.
pub async fn next_expiry(
    db: &impl ConnectionTrait,
    user: &UserId,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            db,
            &format!(
                "SELECT MIN(e) AS e FROM (\
                 SELECT MIN(r.expires_at) AS e FROM recipients r \
                 WHERE r.user_id = $1 AND r.state <> {deleted} AND r.broadcast = 0 AND r.expires_at > $2 \
                 UNION ALL \
                 SELECT MIN(n.expires_at) AS e FROM notifications n \
                 WHERE n.audience = 'all' AND n.expires_at > $2) t",
                deleted = state::DELETED
            ),
            [user.as_str().into(), now_ms.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<i64>>("", "e")?,
        None => None,
    })
}

/// Inbox filters, parsed at the edge.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only ids below this one (paging); `None` starts at the newest.
    pub before: Option<i64>,
    /// 1–100.
    pub limit: u64,
    pub unread_only: bool,
    pub kind: Option<String>,
}

pub const DEFAULT_LIMIT: u64 = 20;
pub const MAX_LIMIT: u64 = 100;

impl ListQuery {
    /// Parses `before`, `limit`, `unread_only`, `kind` with a 400 naming the bad one.
    pub fn parse(query: &str) -> Result<ListQuery, ApiError> {
        let params = web::Query::<std::collections::HashMap<String, String>>::from_query(query)
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "malformed query string"))?
            .into_inner();
        let before = params
            .get("before")
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ApiError::field("before", "before must be a positive id"))
            })
            .transpose()?;
        let limit = match params.get("limit").filter(|v| !v.is_empty()) {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| ApiError::field("limit", "limit must be 1-100"))?,
        };
        let unread_only = match params.get("unread_only").map(String::as_str) {
            None | Some("") | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => {
                return Err(ApiError::field(
                    "unread_only",
                    "unread_only must be true or false",
                ));
            }
        };
        let kind = params
            .get("kind")
            .filter(|v| !v.is_empty())
            .map(|k| {
                Kind::parse(k)
                    .map(|k| k.as_str().to_owned())
                    .map_err(|e| ApiError::field("kind", e.0))
            })
            .transpose()?;
        Ok(ListQuery {
            before,
            limit,
            unread_only,
            kind,
        })
    }
}

/// The short-polling view of an unread count: `{"count", "by_kind", "latest_id"}`.
pub fn unread_view(u: &Unread) -> serde_json::Value {
    serde_json::json!({"count": u.count, "by_kind": u.by_kind, "latest_id": u.latest_id})
}

/// One page of the inbox, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub items: Vec<crate::domain::InboxItem>,
    /// Pass as `before` for the next page; `null` on the last page.
    pub next_before: Option<i64>,
    /// The newest id visible to the user: resuming a stream from it misses nothing
    /// that this page did not show.
    pub cursor: i64,
}

#[derive(FromQueryResult)]
struct ListedRow {
    #[sea_orm(nested)]
    n: NotificationRow,
    state: i16,
}

/// The inbox of `user`, newest first. The cursor and both halves of the page are read
/// in one snapshot (PostgreSQL: `REPEATABLE READ`; SQLite: a read transaction), so the
/// cursor is exactly the newest id visible, the page shows nothing above it, and
/// anything committed meanwhile (commit order is id order) comes after it. Read as
/// three statements without one, a notification committed between them showed in a
/// page whose cursor was below it.
pub async fn list(
    db: &DatabaseConnection,
    user: &UserId,
    q: &ListQuery,
    now_ms: i64,
) -> Result<Page, StoreError> {
    let postgres = is_postgres(db);
    let snapshot = db
        .begin_with_options(TransactionOptions {
            isolation_level: postgres.then_some(IsolationLevel::RepeatableRead),
            access_mode: postgres.then_some(AccessMode::ReadOnly),
            ..Default::default()
        })
        .await?;
    let page = list_in(&snapshot, user, q, now_ms).await?;
    snapshot.commit().await?;
    Ok(page)
}

async fn list_in(
    db: &impl ConnectionTrait,
    user: &UserId,
    q: &ListQuery,
    now_ms: i64,
) -> Result<Page, StoreError> {
    let cursor = latest_id(db, user, now_ms).await?;
    let fetch = q.limit + 1;
    let args = || {
        [
            user.as_str().into(),
            now_ms.into(),
            q.before.unwrap_or(i64::MAX).into(),
            q.kind.clone().unwrap_or_default().into(),
            i64::from(q.unread_only).into(),
            (fetch as i64).into(),
        ]
    };
    let targeted = ListedRow::find_by_statement(stmt(
        db,
        &format!(
            "SELECT {NOTIFICATION_COLUMNS}, r.state AS state FROM recipients r JOIN notifications n ON n.id = r.notification_id \
             WHERE {TARGETED_VISIBLE} AND r.notification_id < $3 AND ($4 = '' OR r.kind = $4) AND ($5 = 0 OR r.state = 0) \
             ORDER BY r.notification_id DESC LIMIT $6"
        ),
        args(),
    ))
    .all(db)
    .await?;
    // The CAST: PostgreSQL widens COALESCE(smallint, 0) to integer, which does not
    // decode as the i16 the targeted half returns.
    let broadcasts = ListedRow::find_by_statement(stmt(
        db,
        &format!(
            "SELECT {NOTIFICATION_COLUMNS}, CAST(COALESCE(s.state, 0) AS SMALLINT) AS state FROM notifications n \
             LEFT JOIN recipients s ON s.user_id = $1 AND s.notification_id = n.id \
             WHERE n.audience = 'all' AND (n.expires_at IS NULL OR n.expires_at > $2) AND COALESCE(s.state, 0) < 2 \
             AND n.id < $3 AND ($4 = '' OR n.kind = $4) AND ($5 = 0 OR s.notification_id IS NULL) \
             ORDER BY n.id DESC LIMIT $6"
        ),
        args(),
    ))
    .all(db)
    .await?;

    let mut merged: Vec<ListedRow> = targeted.into_iter().chain(broadcasts).collect();
    merged.sort_unstable_by_key(|r| std::cmp::Reverse(r.n.id));
    let more = merged.len() as u64 > q.limit;
    merged.truncate(q.limit as usize);
    let next_before = if more {
        merged.last().map(|r| r.n.id)
    } else {
        None
    };
    let items = merged
        .into_iter()
        .map(|r| {
            Ok(crate::domain::InboxItem {
                read: r.state != state::UNREAD,
                notification: Notification::try_from(r.n)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Page {
        items,
        next_before,
        cursor,
    })
}
