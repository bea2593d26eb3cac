//! Connecting to the database and migrating it. SQLite runs in WAL mode so that the
//! producer and the gateway can share one file; PostgreSQL migrations run under an
//! advisory lock so that replicas starting together do not race.

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;

use crate::{config::Settings, migrations::Migrator};

/// Advisory lock key held while migrating (PostgreSQL).
const MIGRATION_LOCK: i64 = 0x7265_6464_6f74_0001;

/// Opens the pool. Nothing is created or migrated here.
pub async fn connect(settings: &Settings) -> Result<DatabaseConnection, sea_orm::DbErr> {
    open(settings, settings.db_max_connections, false).await
}

/// A small pool for reads that must go by index: its PostgreSQL sessions never choose a
/// sequential scan while an index serves (`enable_seqscan = off`) and plan every
/// statement afresh (`plan_cache_mode = force_custom_plan`). On a young database (before
/// autovacuum's first ANALYZE) the planner takes the tables for tiny and scans them whole,
/// testing every row against the id list, however much they have grown; the relay's reads
/// took a third of PostgreSQL's CPU that way. With sequential scans off, a generic plan
/// made while the tables were tiny read the whole primary-key index instead (40-60 ms a
/// read at 20,000 rows) and was kept; a custom plan sees the tables' current size.
/// (SQLite: an ordinary pool.)
pub async fn connect_for_index_reads(
    settings: &Settings,
    max_connections: u32,
) -> Result<DatabaseConnection, sea_orm::DbErr> {
    open(settings, max_connections, true).await
}

async fn open(
    settings: &Settings,
    max_connections: u32,
    index_reads: bool,
) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut opts = ConnectOptions::new(settings.database_url.clone());
    opts.max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    // FULL, not NORMAL: a 201 promises the notification survives a power cut, not just a
    // crash. The producer batches writes, so the extra fsync is paid once per batch.
    opts.map_sqlx_sqlite_opts(|o| {
        o.journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
    });
    if index_reads {
        opts.map_sqlx_postgres_opts(|o| {
            o.options([
                ("enable_seqscan", "off"),
                ("plan_cache_mode", "force_custom_plan"),
            ])
        });
    }
    Database::connect(opts).await
}

/// Applies pending migrations. Safe to call from several processes at once.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let txn = db.begin().await?;
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                .await?;
            Migrator::up(&txn, None).await?;
            txn.commit().await
        }
        _ => {
            // BEGIN IMMEDIATE takes SQLite's write lock: a second service migrating the
            // same file waits (busy timeout), then finds the migrations applied.
            let txn = db
                .begin_with_options(TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..Default::default()
                })
                .await?;
            Migrator::up(&txn, None).await?;
            txn.commit().await
        }
    }
}

/// Cheap liveness check used by `/readyz`.
pub async fn ping(db: &DatabaseConnection) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), db.ping()).await,
        Ok(Ok(()))
    )
}
