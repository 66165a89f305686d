//! Effectively-once handling over at-least-once delivery (feature `postgres`): a consumer
//! records each event it handled in its own database, in the same transaction as the
//! event's effect. A redelivered event (its ack was lost to a crash, or its lease moved)
//! finds its record and has no second effect.
//!
//! ```no_run
//! # async fn demo(pg: &mut tokio_postgres::Client, member: &mut annal_client::Member) -> Result<(), Box<dyn std::error::Error>> {
//! use annal_client::processed;
//!
//! processed::ensure_table(pg).await?;
//! while let Some(d) = member.next().await {
//!     let d = d?;
//!     let tx = pg.transaction().await?;
//!     if processed::claim(&tx, "thumbnailer", &d.event).await? {
//!         tx.execute("UPDATE videos SET state = $1 WHERE id = $2", &[&d.event.event_type.as_str(), &d.event.stream_id.as_str()]).await?;
//!         tx.commit().await?;
//!     }
//!     // Handled now or before: either way, done.
//!     d.ack().await?;
//! }
//! # Ok(()) }
//! ```

use annal_core::RecordedEvent;
use tokio_postgres::GenericClient;

/// The table the records go to.
pub const TABLE: &str = "annal_processed";

/// Creates the table of processed events if it is not there: one row per consumer and
/// event id, with the event's position and when it was handled.
pub async fn ensure_table(db: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    db.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (
            consumer    text        NOT NULL,
            event_id    uuid        NOT NULL,
            position    bigint      NOT NULL,
            handled_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer, event_id)
        )"
    ))
    .await
}

/// Records that `consumer` handles `event`, inside the caller's transaction: true when
/// this is the first time (apply the effect, then commit), false when it was handled
/// before (apply nothing; ack it). The record commits, or rolls back, with the effect.
pub async fn claim(
    tx: &impl GenericClient,
    consumer: &str,
    event: &RecordedEvent,
) -> Result<bool, tokio_postgres::Error> {
    let position = i64::try_from(event.position).unwrap_or(i64::MAX);
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO {TABLE} (consumer, event_id, position) VALUES ($1, $2::text::uuid, $3)
                 ON CONFLICT (consumer, event_id) DO NOTHING"
            ),
            &[&consumer, &event.id.to_string(), &position],
        )
        .await?;
    Ok(inserted == 1)
}

/// Whether `consumer` handled the event `event_id` already.
pub async fn handled(
    db: &impl GenericClient,
    consumer: &str,
    event_id: annal_core::Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let row = db
        .query_opt(
            &format!("SELECT 1 FROM {TABLE} WHERE consumer = $1 AND event_id = $2::text::uuid"),
            &[&consumer, &event_id.to_string()],
        )
        .await?;
    Ok(row.is_some())
}
