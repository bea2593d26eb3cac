//! Makes the unread count index-only: the count filters on `broadcast`, `expires_at` and
//! `notification_id` and groups by `kind`, so an index holding all of them answers it
//! without reading a single table row.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_recipients_unread_cover")
                    .table(Recipients::Table)
                    .if_not_exists()
                    .col(Recipients::UserId)
                    .col(Recipients::State)
                    .col(Recipients::Broadcast)
                    .col(Recipients::Kind)
                    .col(Recipients::ExpiresAt)
                    .col(Recipients::NotificationId)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_recipients_unread")
                    .table(Recipients::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_recipients_unread")
                    .table(Recipients::Table)
                    .if_not_exists()
                    .col(Recipients::UserId)
                    .col(Recipients::State)
                    .col(Recipients::Kind)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_recipients_unread_cover")
                    .table(Recipients::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Recipients {
    Table,
    UserId,
    State,
    Broadcast,
    Kind,
    ExpiresAt,
    NotificationId,
}
