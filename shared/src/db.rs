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
    let mut opts = ConnectOptions::new(settings.database_url.clone());
    opts.max_connections(settings.db_max_connections)
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
