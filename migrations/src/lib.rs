//! Reddot's database schema, as sea-orm migrations that run on SQLite and PostgreSQL.
//!
//! Both services run these at start-up (`reddot-producer migrate` runs them alone).
//! Integer columns are 64-bit everywhere (`big_integer`), because an `INT4` column read
//! into an `i64` decodes on SQLite but fails on PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_schema;
mod m20261123_000002_cover_unread_index;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_schema::Migration),
            Box::new(m20261123_000002_cover_unread_index::Migration),
        ]
    }
}
