//! The database: sea-orm entities and every query Reddot runs. SQL is written once with
//! `$N` placeholders, which both sqlx drivers (PostgreSQL and SQLite) bind by number.

pub mod entity;
pub mod inbox;
pub mod lease;
pub mod maintenance;
pub mod outbox;
pub mod read_state;
pub mod write;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value, sqlx};

use crate::domain::{Audience, Notification};

/// Per-user state of a notification (`recipients.state`).
pub mod state {
    pub const UNREAD: i16 = 0;
    pub const READ: i16 = 1;
    pub const DELETED: i16 = 2;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("the database did not answer in time")]
    Timeout,
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when the database could not be reached (rather than refusing a query): the
    /// caller should answer 503 and retry later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::WriterGone | StoreError::Timeout => true,
            StoreError::Corrupt(_) => false,
            StoreError::Db(err) => match err {
                DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
                DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
                | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => sqlx_unavailable(e),
                _ => false,
            },
        }
    }
}

fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // PostgreSQL classes 08 (connection), 53 (resources), 57 (shutdown);
            // SQLite 5/6 (busy, locked) after the busy timeout.
            db.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57")
                    || c == "5"
                    || c == "6"
            })
        }
        _ => false,
    }
}

/// A `notifications` row as queried.
#[derive(Debug, FromQueryResult)]
pub struct NotificationRow {
    pub id: i64,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub data: String,
    pub sender: Option<String>,
    pub audience: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// The columns of [`NotificationRow`], for `SELECT {NOTIFICATION_COLUMNS} FROM notifications n`.
pub const NOTIFICATION_COLUMNS: &str =
    "n.id, n.kind, n.title, n.body, n.data, n.sender, n.audience, n.created_at, n.expires_at";

impl TryFrom<NotificationRow> for Notification {
    type Error = StoreError;

    fn try_from(row: NotificationRow) -> Result<Self, StoreError> {
        Ok(Notification {
            id: row.id,
            audience: Audience::parse(&row.audience)
                .ok_or_else(|| StoreError::Corrupt(format!("audience of {}", row.id)))?,
            kind: row.kind,
            title: row.title,
            body: row.body,
            data: serde_json::value::RawValue::from_string(row.data)
                .map_err(|_| StoreError::Corrupt("data".into()))?,
            sender: row.sender,
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }
}

/// Builds a statement for the connection's backend. On SQLite, `$N` becomes `?N`: both
/// bind by number, but SQLite's parser resolves each *named* (`$`) parameter by scanning
/// the ones before it. (No SQL here has a `$` inside a string literal.)
pub fn stmt(
    db: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Statement {
    let backend = db.get_database_backend();
    if backend == DbBackend::Sqlite {
        Statement::from_sql_and_values(backend, sql.replace('$', "?"), values)
    } else {
        Statement::from_sql_and_values(backend, sql, values)
    }
}

/// `(?, ?, …), (…)` for `rows` rows of `cols` values: the values clause of a multi-row
/// insert whose only parameters these are. Anonymous `?`, not `$N`: sqlx asks SQLite for
/// the name of every parameter, and SQLite finds a name by walking the list of named
/// ones, which makes thousands of named parameters quadratic to bind. (PostgreSQL gets
/// `$N`, which is what it understands.)
pub fn placeholders(backend: DbBackend, rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        out.push_str(if r > 0 { ", (" } else { "(" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            match backend {
                DbBackend::Sqlite => out.push('?'),
                _ => {
                    out.push('$');
                    out.push_str(&(1 + r * cols + c).to_string());
                }
            }
        }
        out.push(')');
    }
    out
}

/// `$first, $first+1, …` for an `IN (…)` list.
pub fn list(n: usize, first: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ids` lengthened to the next power of two by repeating the last one, for an `IN`
/// list: a list of every length is a new statement text — on PostgreSQL a prepare round
/// trip and a plan — for each count, and the connection's statement cache holds 100.
/// Powers of two make 11 texts up to 1,024, and a repeated id changes no `IN`.
pub fn padded_ids(ids: &[i64]) -> Vec<i64> {
    let mut out = ids.to_vec();
    if let Some(&last) = ids.last() {
        out.resize(ids.len().next_power_of_two(), last);
    }
    out
}

/// Most bound values a statement gets: under SQLite's and PostgreSQL's limits.
pub const MAX_PARAMS: usize = 30_000;

pub fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_row_by_row() {
        assert_eq!(
            placeholders(DbBackend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(placeholders(DbBackend::Sqlite, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(list(3, 4), "$4, $5, $6");
    }

    #[test]
    fn id_lists_are_padded_to_a_power_of_two_with_the_last_id() {
        assert_eq!(padded_ids(&[]), Vec::<i64>::new());
        assert_eq!(padded_ids(&[7]), vec![7]);
        assert_eq!(padded_ids(&[1, 2, 3]), vec![1, 2, 3, 3]);
        assert_eq!(padded_ids(&[1, 2, 3, 4]), vec![1, 2, 3, 4]);
        assert_eq!(padded_ids(&[5; 513]).len(), 1024);
    }
}
