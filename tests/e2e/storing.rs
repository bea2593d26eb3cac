//! What a batch of the producer's writer stores: every field exactly as given, whatever
//! it holds, the recipients and outbox rows of every new notification, ids in request
//! order, and the relay's deletes in the same commit — on both databases.

use reddot_shared::{
    db,
    domain::{Audience, Kind, UserId},
    store::write::{NewNotification, Outcome, WriteRequest, commit_batch},
};
use reddot_tests::{Backend, TestDb};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::{Value, json};

fn request(
    audience: Audience,
    users: &[&str],
    title: &str,
    data: &Value,
    sender: Option<&str>,
    expires_at: Option<i64>,
) -> anyhow::Result<WriteRequest> {
    Ok(WriteRequest {
        notification: NewNotification {
            kind: Kind::parse("comment")?,
            title: title.to_owned(),
            body: format!("body of {title}"),
            data: data.to_string(),
            sender: sender.map(str::to_owned),
            audience,
            users: users
                .iter()
                .map(|u| UserId::parse(u))
                .collect::<Result<_, _>>()?,
            expires_at,
        },
        idempotency: None,
    })
}

fn created_id(outcome: &Outcome) -> anyhow::Result<i64> {
    match outcome {
        Outcome::Created(c) => Ok(c.id),
        other => anyhow::bail!("expected a new notification, got {other:?}"),
    }
}

async fn rows(db: &DatabaseConnection, sql: &str) -> anyhow::Result<Vec<sea_orm::QueryResult>> {
    Ok(db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?)
}

async fn a_batch_stores_every_field_exactly_with_its_recipients_and_outbox_rows(
    backend: Backend,
) -> anyhow::Result<()> {
    let test_db = TestDb::new(backend).await?;
    let conn = Database::connect(&test_db.url).await?;
    db::migrate(&conn).await?;

    // Quotes, backslashes, control characters, non-BMP characters, text that looks like
    // JSON or SQL parameters: stored as given, never interpreted.
    let awkward = "\"quoted\" \\ back\\slash\r\n\ttab \u{1} 🎉 中文 $1 ?2 {\"id\":5} '; --";
    let data = json!({"nested": {"a": [1, 2.5, null, true]}, "s": "\u{1}\n", "big": 9_007_199_254_740_993_i64});
    let expires = reddot_shared::time::now_ms() + 3_600_000;
    let first = commit_batch(
        &conn,
        &[request(
            Audience::User,
            &["alice", "bob"],
            awkward,
            &data,
            Some("admin"),
            Some(expires),
        )?],
        &[],
    )
    .await?;
    let a = created_id(&first[0])?;

    // The second batch also carries the relay's delete of the first one's outbox row.
    let many: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let second = commit_batch(
        &conn,
        &[
            request(Audience::All, &[], "123", &json!({}), None, None)?,
            request(Audience::User, &many, "to many", &json!({}), None, None)?,
        ],
        &[a],
    )
    .await?;
    let (b, c) = (created_id(&second[0])?, created_id(&second[1])?);
    assert!(a < b && b < c, "ids in request order: {a} {b} {c}");

    let stored = rows(
        &conn,
        &format!("SELECT id, kind, title, body, data, sender, audience, recipients, expires_at FROM notifications WHERE id IN ({a}, {b}) ORDER BY id"),
    )
    .await?;
    assert_eq!(stored.len(), 2);
    let n = &stored[0];
    assert_eq!(n.try_get::<String>("", "kind")?, "comment");
    assert_eq!(n.try_get::<String>("", "title")?, awkward);
    assert_eq!(
        n.try_get::<String>("", "body")?,
        format!("body of {awkward}")
    );
    let stored_data: Value = serde_json::from_str(&n.try_get::<String>("", "data")?)?;
    assert_eq!(stored_data, data);
    assert_eq!(
        n.try_get::<Option<String>>("", "sender")?.as_deref(),
        Some("admin")
    );
    assert_eq!(n.try_get::<String>("", "audience")?, "user");
    assert_eq!(n.try_get::<Option<i64>>("", "recipients")?, Some(2));
    assert_eq!(n.try_get::<Option<i64>>("", "expires_at")?, Some(expires));
    let all = &stored[1];
    assert_eq!(all.try_get::<String>("", "title")?, "123");
    assert_eq!(all.try_get::<String>("", "audience")?, "all");
    assert_eq!(all.try_get::<Option<String>>("", "sender")?, None);
    assert_eq!(all.try_get::<Option<i64>>("", "recipients")?, None);
    assert_eq!(all.try_get::<Option<i64>>("", "expires_at")?, None);

    let recipients = rows(
        &conn,
        &format!("SELECT user_id, kind, state, expires_at FROM recipients WHERE notification_id = {a} ORDER BY user_id"),
    )
    .await?;
    let users: Vec<String> = recipients
        .iter()
        .map(|r| r.try_get::<String>("", "user_id"))
        .collect::<Result<_, _>>()?;
    assert_eq!(users, ["alice", "bob"]);
    for r in &recipients {
        assert_eq!(r.try_get::<String>("", "kind")?, "comment");
        assert_eq!(r.try_get::<i16>("", "state")?, 0, "unread");
        assert_eq!(r.try_get::<Option<i64>>("", "expires_at")?, Some(expires));
    }
    let counts = rows(
        &conn,
        "SELECT notification_id, COUNT(*) AS n FROM recipients GROUP BY notification_id ORDER BY notification_id",
    )
    .await?;
    let counts: Vec<(i64, i64)> = counts
        .iter()
        .map(|r| Ok((r.try_get("", "notification_id")?, r.try_get("", "n")?)))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(counts, [(a, 2), (c, 10_000)], "no rows for the broadcast");

    let outbox = rows(
        &conn,
        "SELECT notification_id FROM outbox ORDER BY notification_id",
    )
    .await?;
    let outbox: Vec<i64> = outbox
        .iter()
        .map(|r| r.try_get::<i64>("", "notification_id"))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        outbox,
        [b, c],
        "the published row went with the second batch"
    );

    // A batch of deletes only: nothing new, the rows gone.
    let none = commit_batch(&conn, &[], &[b, c]).await?;
    assert!(none.is_empty());
    assert!(
        rows(&conn, "SELECT notification_id FROM outbox")
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_a_batch_stores_every_field_exactly_with_its_recipients_and_outbox_rows()
-> anyhow::Result<()> {
    a_batch_stores_every_field_exactly_with_its_recipients_and_outbox_rows(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_a_batch_stores_every_field_exactly_with_its_recipients_and_outbox_rows()
-> anyhow::Result<()> {
    a_batch_stores_every_field_exactly_with_its_recipients_and_outbox_rows(Backend::Postgres).await
}
