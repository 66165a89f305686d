//! A runner reports what an operator watches as Prometheus metrics: events applied by type,
//! batch durations, lag behind the head, the position, failures. Alone in its binary, since
//! it installs the process's metrics recorder.

mod common;

use std::time::Duration;

use annal_core::{AppendRequest, EventStore, ExpectedRevision, RecordedEvent, Source};
use annal_cqrs::projection::{
    Changes, ColumnType::*, OnFailure, Projection, Runner, Settings, Sink, Table,
};
use annal_cqrs::{to_new, Context};
use common::AccountEvent;
use metrics_exporter_prometheus::PrometheusBuilder;

struct Owners;

impl Projection for Owners {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "owners"
    }

    fn source(&self) -> Source {
        Source::Category("account".into())
    }

    fn tables(&self) -> Vec<Table> {
        vec![Table::new("owners").key("id", Text).column("owner", Text)]
    }

    fn apply(
        &self,
        e: &AccountEvent,
        r: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        match e {
            AccountEvent::Opened { owner } => {
                out.upsert("owners", [(&*r.stream_id).into(), owner.into()])
            }
            AccountEvent::Withdrawn { .. } => return Err("withdrawals are not expected".into()),
            _ => {}
        }
        Ok(())
    }
}

/// The value of the sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_reports_applied_events_lag_and_failures() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let e = common::embedded();
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::sqlite(dir.path().join("read.db")).unwrap();
    let mut head = 0;
    for a in 0..10 {
        let events = [
            AccountEvent::Opened {
                owner: format!("o{a}"),
            },
            AccountEvent::Deposited { amount: 5 },
            AccountEvent::Deposited { amount: 6 },
            AccountEvent::Withdrawn { amount: 1 },
        ];
        head = e
            .store
            .append(AppendRequest::stream(
                format!("account-{a}"),
                ExpectedRevision::Any,
                to_new(&events, &Context::new()).unwrap(),
            ))
            .await
            .unwrap()
            .last_position;
    }
    let running = Runner::new(e.store.clone(), sink, Owners)
        .with_settings(Settings {
            on_failure: OnFailure::Skip,
            batch: 8,
            ..Settings::default()
        })
        .spawn();
    running
        .wait_for(head, Duration::from_secs(30))
        .await
        .unwrap();
    running.stop().await.unwrap();

    let text = handle.render();
    let applied = |t: &str| {
        sample(
            &text,
            &format!("annal_projection_events_total{{projection=\"owners\",type=\"{t}\"}}"),
        )
    };
    assert_eq!(applied("Opened"), 10.0);
    assert_eq!(applied("Deposited"), 20.0);
    assert_eq!(
        sample(
            &text,
            "annal_projection_failures_total{projection=\"owners\",action=\"skipped\"}"
        ),
        10.0
    );
    assert_eq!(
        sample(&text, "annal_projection_position{projection=\"owners\"}"),
        head as f64
    );
    assert_eq!(
        sample(&text, "annal_projection_lag_events{projection=\"owners\"}"),
        0.0
    );
    assert_eq!(
        sample(&text, "annal_projection_lag_seconds{projection=\"owners\"}"),
        0.0
    );
    assert!(
        sample(
            &text,
            "annal_projection_batch_seconds_count{projection=\"owners\"}"
        ) >= 5.0
    );
}
