//! Prometheus metrics, rendered at `/metrics` in the text format.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `annal_appends_total{result}` | counter | append requests, by `ok`, `conflict` or `error` |
//! | `annal_events_written_total` | counter | events appended |
//! | `annal_bytes_written_total` | counter | bytes of event data appended |
//! | `annal_append_seconds` | histogram | append latency, from the request to its durable answer |
//! | `annal_fsync_seconds` | histogram | the engine's fdatasync calls (recorded by the engine) |
//! | `annal_subscriptions_active` | gauge | open subscriptions, gRPC and SSE |
//! | `annal_subscriber_lag_events` | histogram | how far behind the head a subscriber's batch was when sent |
//! | `annal_requests_total{api,status}` | counter | requests by API (`grpc`, `http`, `wire`: framed appends and read pages) and status class |
//! | `annal_head_position` | gauge | the log's last position, set at each scrape |
//! | `annal_append_overdrafts_total` | counter | appends that went over the in-flight budget so that appends holding parts of it could not wait on each other |
//! | `annal_connections_closed_total{reason}` | counter | connections the server closed: `idle`, `unauthenticated`, `evicted` (idle the longest when a new client came at the cap), `full` (a new client, when every connection was busy) |
//! | `annal_append_bodies_receiving` | gauge | appends whose body (or framed payload) is being received |
//! | `annal_stalled_reads_total` | counter | reads stopped because their client took nothing for `write_timeout` |
//! | `annal_stopped_answers_total` | counter | reads and subscriptions stopped for holding more than their share of `max_answer_bytes` when it ran short |
//! | `annal_stalled_connections_total` | counter | connections closed because their client took nothing for `write_timeout` |
//! | `annal_slow_bodies_total{api}` | counter | appends dropped because their body arrived too slowly |
//! | `annal_snapshots_kept` | gauge | snapshots the store keeps (recorded by the engine) |
//! | `annal_snapshot_bytes{kind}` | gauge | bytes of the snapshot file's `live` and `dead` records (recorded by the engine) |
//! | `annal_snapshot_writes_total{op}` | counter | snapshot `put`s and `delete`s made durable (recorded by the engine) |
//! | `annal_snapshot_compactions_total` | counter | rewrites of the snapshot file without its dead records (recorded by the engine) |
//! | `annal_streams` | gauge | streams in the store, set at each checkpoint (recorded by the engine) |
//! | `annal_stream_heads_memory_bytes` | gauge | memory the stream heads take: those changed since the last checkpoint, the heads files' filters and fences, and the heads cache; set at each checkpoint (recorded by the engine) |
//! | `annal_group_lag_events{group}` | gauge | positions from a consumer group's floor to the head, set at each scrape |
//! | `annal_group_lag_seconds{group}` | gauge | how long ago its oldest unsettled event was recorded |
//! | `annal_group_in_flight{group}` | gauge | events its members hold unacknowledged |
//! | `annal_group_parked{group}` | gauge | its parked events |
//! | `annal_group_members{group}` | gauge | its members |
//! | `annal_group_deliveries_total{group,kind}` | counter | deliveries, `first` or `retry` (since the group last started) |
//! | `annal_group_acks_total{group}` | counter | acknowledgements |
//! | `annal_group_parks_total{group}` | counter | events parked |
//! | `annal_group_rebalances_total{group}` | counter | members joining, leaving or lost |

use std::sync::OnceLock;
use std::time::Duration;

use annal_core::{AppendResult, Error};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (later servers in the same process share it).
pub fn install() {
    HANDLE.get_or_init(|| {
        let latency = [
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5,
        ];
        let lag = [
            0.0,
            1.0,
            10.0,
            100.0,
            1_000.0,
            10_000.0,
            100_000.0,
            1_000_000.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_lag_events".into()), &lag))
            .map(|b| b.build_recorder());
        match recorder {
            Ok(recorder) => {
                let handle = recorder.handle();
                if metrics::set_global_recorder(recorder).is_err() {
                    tracing::warn!("another metrics recorder is installed; /metrics stays empty");
                    return None;
                }
                describe();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!("metrics are off: {e}");
                None
            }
        }
    });
}

fn describe() {
    metrics::describe_counter!("annal_appends_total", "Append requests, by result");
    metrics::describe_counter!("annal_events_written_total", "Events appended");
    metrics::describe_counter!("annal_bytes_written_total", "Bytes of event data appended");
    metrics::describe_histogram!(
        "annal_append_seconds",
        metrics::Unit::Seconds,
        "Append latency until the durable answer"
    );
    metrics::describe_histogram!(
        "annal_fsync_seconds",
        metrics::Unit::Seconds,
        "Latency of the engine's fdatasync calls"
    );
    metrics::describe_gauge!("annal_subscriptions_active", "Open subscriptions");
    metrics::describe_histogram!(
        "annal_subscriber_lag_events",
        "Events between the head and a subscriber's last delivered event, per batch sent"
    );
    metrics::describe_counter!("annal_requests_total", "Requests by API and status class");
    metrics::describe_gauge!("annal_head_position", "The log's last position");
    metrics::describe_counter!(
        "annal_append_overdrafts_total",
        "Appends that read the rest of their body over the in-flight budget"
    );
    metrics::describe_counter!(
        "annal_stalled_reads_total",
        "Reads stopped because their client took nothing for the write timeout"
    );
    metrics::describe_counter!(
        "annal_stopped_answers_total",
        "Reads and subscriptions stopped for holding more than their share of the answer budget"
    );
    metrics::describe_counter!(
        "annal_connections_closed_total",
        "Connections the server closed, by reason"
    );
    metrics::describe_counter!(
        "annal_stalled_connections_total",
        "Connections closed because their client took nothing for the write timeout"
    );
    metrics::describe_gauge!(
        "annal_append_bodies_receiving",
        "Appends whose body is being received"
    );
    metrics::describe_counter!(
        "annal_slow_bodies_total",
        "Appends dropped because their body arrived too slowly, by API"
    );
    metrics::describe_gauge!("annal_snapshots_kept", "Snapshots the store keeps");
    metrics::describe_gauge!(
        "annal_snapshot_bytes",
        "Bytes of the snapshot file's live and dead records"
    );
    metrics::describe_counter!(
        "annal_snapshot_writes_total",
        "Snapshot puts and deletes made durable, by operation"
    );
    metrics::describe_counter!(
        "annal_snapshot_compactions_total",
        "Rewrites of the snapshot file without its dead records"
    );
}

/// An append whose body is being received, counted in `annal_append_bodies_receiving`
/// while this lives.
pub struct Receiving(());

impl Receiving {
    pub fn new() -> Receiving {
        metrics::gauge!("annal_append_bodies_receiving").increment(1.0);
        Receiving(())
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        metrics::gauge!("annal_append_bodies_receiving").decrement(1.0);
    }
}

/// Counts a connection the server closed: `idle`, `unauthenticated`, `evicted` (idle the
/// longest when a new client came at the cap) or `full` (a new one, every other busy).
pub fn connection_closed(reason: &'static str) {
    metrics::counter!("annal_connections_closed_total", "reason" => reason).increment(1);
}

/// Counts a read stopped because its client took nothing for the write timeout.
pub fn stalled_read() {
    metrics::counter!("annal_stalled_reads_total").increment(1);
}

/// Counts a read or subscription stopped for holding more than its share of the answer
/// budget.
pub fn stopped_answers() {
    metrics::counter!("annal_stopped_answers_total").increment(1);
}

/// Counts a connection closed because its client took nothing for the write timeout.
pub fn stalled_connection() {
    metrics::counter!("annal_stalled_connections_total").increment(1);
}

/// Counts an append that took the overdraft.
pub fn overdraft() {
    metrics::counter!("annal_append_overdrafts_total").increment(1);
}

/// Counts an append dropped for a body that arrived too slowly.
pub fn slow_body(api: &'static str) {
    metrics::counter!("annal_slow_bodies_total", "api" => api).increment(1);
}

/// The metrics in Prometheus text format.
pub fn render(head: Option<u64>) -> String {
    if let Some(h) = head {
        metrics::gauge!("annal_head_position").set(h as f64);
    }
    match HANDLE.get() {
        Some(Some(handle)) => handle.render(),
        _ => String::new(),
    }
}

/// Records an append's outcome.
pub fn appended(result: &Result<AppendResult, Error>, events: usize, bytes: usize, took: Duration) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) if e.is_conflict() => "conflict",
        Err(_) => "error",
    };
    metrics::counter!("annal_appends_total", "result" => outcome).increment(1);
    if result.is_ok() {
        metrics::counter!("annal_events_written_total").increment(events as u64);
        metrics::counter!("annal_bytes_written_total").increment(bytes as u64);
        metrics::histogram!("annal_append_seconds").record(took.as_secs_f64());
    }
}

/// Records a subscriber's lag when a batch is sent.
pub fn lag(events: u64) {
    metrics::histogram!("annal_subscriber_lag_events").record(events as f64);
}

/// Records a finished request.
/// The class a response's HTTP status falls in, as `annal_requests_total` labels it.
pub fn class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

pub fn request(api: &'static str, status: &'static str) {
    metrics::counter!("annal_requests_total", "api" => api, "status" => status).increment(1);
}

/// Counts an open subscription for as long as it lives.
pub struct ActiveSubscription;

impl ActiveSubscription {
    pub fn new() -> Self {
        metrics::gauge!("annal_subscriptions_active").increment(1.0);
        ActiveSubscription
    }
}

impl Drop for ActiveSubscription {
    fn drop(&mut self) {
        metrics::gauge!("annal_subscriptions_active").decrement(1.0);
    }
}

/// Sets the consumer groups' metrics from their states.
pub fn groups(groups: &[crate::groups::runtime::Status]) {
    for g in groups {
        let name = g.def.name.clone();
        let gauge = |metric: &'static str, v: f64| {
            metrics::gauge!(metric, "group" => name.clone()).set(v);
        };
        gauge("annal_group_lag_events", g.lag_events as f64);
        gauge("annal_group_lag_seconds", g.lag_seconds);
        gauge("annal_group_in_flight", g.gauges.in_flight as f64);
        gauge("annal_group_parked", g.gauges.parked as f64);
        gauge("annal_group_members", g.gauges.members as f64);
        let c = g.counters;
        let first = c.delivered.saturating_sub(c.redelivered);
        metrics::counter!("annal_group_deliveries_total", "group" => name.clone(), "kind" => "first")
            .absolute(first);
        metrics::counter!("annal_group_deliveries_total", "group" => name.clone(), "kind" => "retry")
            .absolute(c.redelivered);
        metrics::counter!("annal_group_acks_total", "group" => name.clone()).absolute(c.acked);
        metrics::counter!("annal_group_parks_total", "group" => name.clone()).absolute(c.parked);
        metrics::counter!("annal_group_rebalances_total", "group" => name).absolute(c.rebalances);
    }
}
