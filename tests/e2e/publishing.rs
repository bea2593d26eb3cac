//! What the producer publishes: exactly what it committed, to the right exchange and
//! routing keys, in id order.

use std::time::Duration;

use reddot_tests::{Backend, Stack, TestConsumer};
use serde_json::json;

async fn a_consumer_receives_exactly_the_committed_notifications(
    backend: Backend,
) -> anyhow::Result<()> {
    let stack = Stack::start(backend).await?;
    let mut consumer = TestConsumer::bind(&stack.vhost, &["alice", "bob"]).await?;

    let targeted = stack.notify(&json!({"to": {"users": ["alice", "bob", "carol"]}, "kind": "comment", "title": "New reply", "data": {"post_id": 42}})).await?;
    let other = stack
        .notify(&json!({"to": {"users": ["carol"]}, "title": "not for alice or bob"}))
        .await?;
    let broadcast = stack
        .notify(&json!({"to": {"all": true}, "title": "Maintenance"}))
        .await?;

    let got = consumer.take(2, Duration::from_secs(10)).await?;
    assert_eq!(got[0].id, targeted);
    assert_eq!(got[0].users, ["alice", "bob", "carol"]);
    assert_eq!(got[0].json["title"], "New reply");
    assert_eq!(got[0].json["data"]["post_id"], 42);
    assert_eq!(got[0].json["audience"], "user");
    assert_eq!(got[1].id, broadcast);
    assert_eq!(got[1].json["audience"], "all");
    assert!(other > targeted && other < broadcast);
    consumer.expect_nothing(Duration::from_millis(500)).await
}

#[tokio::test]
async fn sqlite_a_consumer_receives_exactly_the_committed_notifications() -> anyhow::Result<()> {
    a_consumer_receives_exactly_the_committed_notifications(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_a_consumer_receives_exactly_the_committed_notifications() -> anyhow::Result<()> {
    a_consumer_receives_exactly_the_committed_notifications(Backend::Postgres).await
}

/// The relay reads by id list on its own connections, which plan every read afresh and
/// never choose a sequential scan: on a young database the planner takes the tables for
/// tiny and would scan them whole for every batch, however much they have grown; and a
/// plan cached while they were tiny (a full-index bitmap scan, when sequential scans are
/// off) stayed in use as they grew.
#[tokio::test]
async fn postgres_the_relays_connections_plan_each_read_without_sequential_scans()
-> anyhow::Result<()> {
    use reddot_shared::config::{Service, Settings};
    use sea_orm::{ConnectionTrait, Statement};

    async fn setting(db: &sea_orm::DatabaseConnection, name: &str) -> anyhow::Result<String> {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT current_setting('{name}') AS v"),
            ))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no row"))?;
        Ok(row.try_get("", "v")?)
    }

    let db = reddot_tests::TestDb::new(Backend::Postgres).await?;
    let settings = Settings::from_lookup(Service::Producer, |name| match name {
        "REDDOT_DATABASE_URL" => Some(db.url.clone()),
        "REDDOT_DEV" => Some("1".into()),
        _ => None,
    })?;
    let relay = reddot_shared::db::connect_for_index_reads(&settings, 1).await?;
    let everyone_else = reddot_shared::db::connect(&settings).await?;
    assert_eq!(setting(&relay, "enable_seqscan").await?, "off");
    assert_eq!(
        setting(&relay, "plan_cache_mode").await?,
        "force_custom_plan"
    );
    assert_eq!(setting(&everyone_else, "enable_seqscan").await?, "on");
    assert_eq!(setting(&everyone_else, "plan_cache_mode").await?, "auto");
    Ok(())
}

/// The relay's lease is renewed beside publishing, not in its way. A renew that waits
/// for a lock — on SQLite the single write lock behind the writer's back-to-back
/// commits, up to 440 ms under load; here a row lock the test holds on PostgreSQL — must
/// not hold up notifications while the last renew is still valid.
#[tokio::test]
async fn postgres_a_lease_renew_waiting_for_a_lock_does_not_hold_publishing() -> anyhow::Result<()>
{
    use sea_orm::{ConnectionTrait, TransactionTrait};

    let stack = Stack::start(Backend::Postgres).await?;
    let mut consumer = TestConsumer::bind(&stack.vhost, &["alice"]).await?;
    let to_alice = json!({"to": {"users": ["alice"]}, "title": "hello"});
    let before = stack.notify(&to_alice).await?;
    assert_eq!(consumer.next(Duration::from_secs(10)).await?.id, before);

    // Arrange: the lease row is locked, and the relay's next renew (every 2 s) waits.
    let db = stack.db.connect().await?;
    let lock = db.begin().await?;
    lock.execute_unprepared("SELECT name FROM leases WHERE name = 'outbox_relay' FOR UPDATE")
        .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Act + assert: the last successful renew began at most ~2 s before the lock, so
    // the relay stays leader until at least ~6 s after it (8 s per renew): this one is
    // published, by 5.5 s after the lock, while the renew still waits.
    let during = stack.notify(&to_alice).await?;
    let got = consumer.next(Duration::from_secs(3)).await;
    lock.rollback().await?;
    assert_eq!(got?.id, during, "published while the renew waited");

    // Once the lock is gone the renew goes through and publishing goes on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = stack.notify(&to_alice).await?;
    assert_eq!(consumer.next(Duration::from_secs(10)).await?.id, after);
    db.close().await?;
    Ok(())
}
