//! The first schema: notifications, per-user recipient state, the outbox, idempotency
//! keys and the relay lease.
//!
//! Timestamps are Unix milliseconds in `BIGINT` columns: the same type and the same
//! comparisons on SQLite and PostgreSQL, and cheap to compare with "now" in indexes.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One row per notification, targeted or broadcast. The id is the global sequence
        // that every cursor and resume relies on; SQLite's AUTOINCREMENT never reuses an id
        // even after the newest rows are cleaned up.
        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Notifications::Id))
                    .col(string_len(Notifications::Kind, 64))
                    .col(text(Notifications::Title))
                    .col(text(Notifications::Body))
                    .col(text(Notifications::Data))
                    .col(text_null(Notifications::Sender))
                    .col(string_len(Notifications::Audience, 8))
                    .col(big_integer_null(Notifications::Recipients))
                    .col(big_integer(Notifications::CreatedAt))
                    .col(big_integer_null(Notifications::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "idx_notifications_audience_id",
            Notifications::Table,
            &[Notifications::Audience, Notifications::Id],
        )
        .await?;
        index(
            manager,
            "idx_notifications_expires_at",
            Notifications::Table,
            &[Notifications::ExpiresAt],
        )
        .await?;

        // Per-user state. A targeted notification has one row per recipient from the start
        // (state unread). A broadcast has none until a user reads or deletes it: fan-out on
        // read keeps a broadcast O(1) rows to write. `kind` and `expires_at` are copied here
        // so that the unread count is one index range scan over the user's unread rows.
        manager
            .create_table(
                Table::create()
                    .table(Recipients::Table)
                    .if_not_exists()
                    .col(string_len(Recipients::UserId, 128))
                    .col(big_integer(Recipients::NotificationId))
                    .col(small_integer(Recipients::Broadcast))
                    .col(string_len(Recipients::Kind, 64))
                    .col(big_integer_null(Recipients::ExpiresAt))
                    .col(small_integer(Recipients::State).default(0))
                    .primary_key(
                        Index::create()
                            .col(Recipients::UserId)
                            .col(Recipients::NotificationId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_recipients_notification")
                            .from(Recipients::Table, Recipients::NotificationId)
                            .to(Notifications::Table, Notifications::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "idx_recipients_unread",
            Recipients::Table,
            &[Recipients::UserId, Recipients::State, Recipients::Kind],
        )
        .await?;
        index(
            manager,
            "idx_recipients_notification",
            Recipients::Table,
            &[Recipients::NotificationId],
        )
        .await?;

        // Notifications committed but not yet confirmed by RabbitMQ, in id order.
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(big_integer(Outbox::NotificationId).primary_key())
                    .col(big_integer(Outbox::CreatedAt))
                    .to_owned(),
            )
            .await?;

        // First responses to requests that carried an Idempotency-Key, per API key
        // (`scope` is a hash of the key, never the key).
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .if_not_exists()
                    .col(string_len(IdempotencyKeys::Scope, 64))
                    .col(string_len(IdempotencyKeys::Key, 255))
                    .col(string_len(IdempotencyKeys::RequestHash, 64))
                    .col(small_integer(IdempotencyKeys::Status))
                    .col(text(IdempotencyKeys::Response))
                    .col(big_integer(IdempotencyKeys::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::Scope)
                            .col(IdempotencyKeys::Key),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "idx_idempotency_keys_created_at",
            IdempotencyKeys::Table,
            &[IdempotencyKeys::CreatedAt],
        )
        .await?;

        // One lease per singleton job (the outbox relay): whoever holds an unexpired lease
        // is the only one doing the job.
        manager
            .create_table(
                Table::create()
                    .table(Leases::Table)
                    .if_not_exists()
                    .col(string_len(Leases::Name, 64).primary_key())
                    .col(string_len(Leases::Holder, 128))
                    .col(big_integer(Leases::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(Leases::Table)
                    .columns([Leases::Name, Leases::Holder, Leases::ExpiresAt])
                    .values_panic(["outbox_relay".into(), "".into(), 0i64.into()])
                    .on_conflict(OnConflict::column(Leases::Name).do_nothing().to_owned())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Leases::Table.into_iden(),
            IdempotencyKeys::Table.into_iden(),
            Outbox::Table.into_iden(),
            Recipients::Table.into_iden(),
            Notifications::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

async fn index<T: IntoIden + Copy + 'static, C: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    cols: &[C],
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(table).if_not_exists();
    for col in cols {
        stmt.col(*col);
    }
    manager.create_index(stmt.to_owned()).await
}

#[derive(DeriveIden, Clone, Copy)]
enum Notifications {
    Table,
    Id,
    Kind,
    Title,
    Body,
    Data,
    Sender,
    Audience,
    Recipients,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Recipients {
    Table,
    UserId,
    NotificationId,
    Broadcast,
    Kind,
    ExpiresAt,
    State,
}

#[derive(DeriveIden, Clone, Copy)]
enum Outbox {
    Table,
    NotificationId,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum IdempotencyKeys {
    Table,
    Scope,
    Key,
    RequestHash,
    Status,
    Response,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Leases {
    Table,
    Name,
    Holder,
    ExpiresAt,
}
