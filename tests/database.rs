//! A fresh database per test: an SQLite file in a temp dir, or a PostgreSQL database
//! with a unique name, dropped again when the test ends.

use std::path::PathBuf;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> anyhow::Result<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let path: PathBuf = dir.path().join("reddot.db");
                Ok(Self {
                    backend,
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    name: None,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let name = format!("reddot_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(crate::pg_admin_url()).await?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await?;
                admin.close().await?;
                let base = crate::pg_admin_url();
                let root = base.rsplit_once('/').map(|(r, _)| r).unwrap_or(&base);
                Ok(Self {
                    backend,
                    url: format!("{root}/{name}"),
                    name: Some(name),
                    _dir: None,
                })
            }
        }
    }

    /// A direct connection, for assertions on what was stored.
    pub async fn connect(&self) -> anyhow::Result<DatabaseConnection> {
        Ok(Database::connect(&self.url).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        // Drop runs outside any runtime guarantee: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let admin = Database::connect(crate::pg_admin_url()).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                admin.close().await
            })?;
            anyhow::Ok(())
        })
        .join();
    }
}
