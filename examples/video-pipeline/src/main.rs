//! A video processing pipeline on Annal: uploads are worked by several workers through a
//! consumer group (all events of one video go to one worker, in order); each video's life
//! (uploaded, processing started, progress, completed or failed) is kept by a projection
//! in the `videos` read model, with a view of stuck videos. The field's failure story, a
//! status update lost because the database was busy, is shown and answered by replaying
//! the events.
//!
//! `cargo run -p video-pipeline` tells the whole story; the subcommands do one thing each.

use std::time::Duration;

use annal_client::{Client, GroupArgs, GroupCall};
use annal_core::{AppendRequest, EventStore, ExpectedRevision, RecordedEvent, Source, Timestamp};
use annal_cqrs::projection::{Changes, ColumnType::*, Projection, Runner, Sink, Table, Value};
use annal_cqrs::{decode_recorded, to_new, Context, Event, Upcasters};
use clap::{Parser, Subcommand};
use example_support::{maintain, AnyStore, Maintain, Where, READ_YOUR_WRITES};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VideoEvent {
    Uploaded { title: String },
    ProcessingStarted { worker: String },
    Progressed { percent: u32 },
    Completed { output: String },
    Failed { reason: String },
}

impl Event for VideoEvent {}

/// `videos`: a row per video, its status and who works on it.
pub struct Videos;

impl Projection for Videos {
    type Event = VideoEvent;

    fn name(&self) -> &str {
        "videos"
    }

    fn source(&self) -> Source {
        Source::Category("video".into())
    }

    fn tables(&self) -> Vec<Table> {
        vec![Table::new("videos")
            .key("id", Text)
            .column("title", Text)
            .column("status", Text)
            .column("worker", Text)
            .column("progress", Int)
            .column("started_at", Int)
            .column("finished_at", Int)
            .column("reason", Text)
            .index("by_status", &["status", "started_at"])]
    }

    fn apply(
        &self,
        e: &VideoEvent,
        r: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        let id = Value::from(r.stream_id.strip_prefix("video-").unwrap_or(&r.stream_id));
        let at = Value::from(r.recorded_at);
        match e {
            VideoEvent::Uploaded { title } => out.upsert(
                "videos",
                [
                    id,
                    title.into(),
                    "uploaded".into(),
                    Value::Null,
                    0.into(),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                ],
            ),
            VideoEvent::ProcessingStarted { worker } => out.execute(
                "UPDATE {videos} SET status = 'processing', worker = $2, started_at = $3 \
                 WHERE id = $1",
                [id, worker.into(), at],
            ),
            VideoEvent::Progressed { percent } => out.execute(
                "UPDATE {videos} SET progress = $2 WHERE id = $1",
                [id, (*percent).into()],
            ),
            VideoEvent::Completed { .. } => out.execute(
                "UPDATE {videos} SET status = 'completed', progress = 100, finished_at = $2 \
                 WHERE id = $1",
                [id, at],
            ),
            VideoEvent::Failed { reason } => out.execute(
                "UPDATE {videos} SET status = 'failed', reason = $2, finished_at = $3 \
                 WHERE id = $1",
                [id, reason.into(), at],
            ),
        }
        Ok(())
    }
}

#[derive(Parser)]
#[command(
    about = "A video processing pipeline on Annal: a consumer group of workers, a stuck-videos view"
)]
struct Cli {
    #[command(flatten)]
    place: Where,
    #[command(subcommand)]
    command: Option<Do>,
}

#[derive(Subcommand)]
enum Do {
    /// The whole story, start to end (what runs without a subcommand).
    Demo {
        /// How many videos to upload.
        #[arg(long, default_value_t = 12)]
        videos: u32,
        /// How many workers share them.
        #[arg(long, default_value_t = 3)]
        workers: u32,
    },
    /// Videos started and not finished for longer than `--after`.
    Stuck {
        #[arg(long, default_value = "10m")]
        after: humantime::Duration,
    },
    #[command(flatten)]
    Maintain(Maintain),
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let place = cli.place.open_served("video-pipeline").await?;
    let (store, sink) = (place.store.clone(), place.sink.clone());
    match cli.command.unwrap_or(Do::Demo {
        videos: 12,
        workers: 3,
    }) {
        Do::Demo { videos, workers } => {
            demo(&store, &sink, &place.store_name, videos, workers).await?
        }
        Do::Stuck { after } => {
            let running = Runner::new(store.clone(), sink.clone(), Videos).spawn();
            if let Some(head) = store.head().await? {
                running.wait_for(head, READ_YOUR_WRITES).await?;
            }
            running.stop().await?;
            let stuck = stuck(&sink, "", after.into()).await?;
            println!("{} stuck videos", stuck.len());
            for s in stuck {
                println!("  {s}");
            }
        }
        Do::Maintain(what) => maintain(what, store, sink, Videos).await?,
    }
    place.close().await
}

/// Videos whose id starts with `run` that are processing and started more than `after`
/// ago, as lines.
async fn stuck(sink: &Sink, run: &str, after: Duration) -> anyhow::Result<Vec<String>> {
    let before = Timestamp::now().as_micros() - after.as_micros() as i64;
    let rows = sink
        .query(
            "SELECT id, worker, progress FROM videos WHERE status = 'processing' \
             AND started_at <= $1 AND id LIKE $2 ORDER BY id",
            &[before.into(), format!("{run}%").into()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id = r[0].as_text().unwrap_or_default();
            format!(
                "video {}: processing by {} at {}%",
                id.strip_prefix(run).unwrap_or(id),
                r[1].as_text().unwrap_or("?"),
                r[2].as_int().unwrap_or(0)
            )
        })
        .collect())
}

/// What a worker does with an upload: start, report progress, and finish. Every fifth
/// video has a codec the workers do not support; video 8's worker goes silent at 40%.
async fn work(client: &Client, worker: &str, upload: &RecordedEvent) -> anyhow::Result<u64> {
    let n: u32 = upload
        .stream_id
        .rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut events = vec![
        VideoEvent::ProcessingStarted {
            worker: worker.to_string(),
        },
        VideoEvent::Progressed { percent: 40 },
    ];
    if n != 8 {
        events.push(VideoEvent::Progressed { percent: 80 });
        events.push(if n.is_multiple_of(5) {
            VideoEvent::Failed {
                reason: "unsupported codec".into(),
            }
        } else {
            VideoEvent::Completed {
                output: format!("{n}.mp4"),
            }
        });
    }
    let context = Context::caused_by(upload).with_actor(worker);
    let mut last = 0;
    // Each step is its own append, as a worker reports as it goes.
    for e in events {
        last = client
            .append(AppendRequest::stream(
                &*upload.stream_id,
                ExpectedRevision::Any,
                to_new(&[e], &context)?,
            ))
            .await?
            .last_position;
    }
    Ok(last)
}

async fn demo(
    store: &AnyStore,
    sink: &Sink,
    store_name: &str,
    videos: u32,
    workers: u32,
) -> anyhow::Result<()> {
    let AnyStore::Remote(client) = store else {
        anyhow::bail!("the pipeline needs a server for its consumer group");
    };
    let run = format!(
        "{:04x}",
        Timestamp::now().as_micros() as u16 ^ std::process::id() as u16
    );
    println!(
        "Video processing on Annal ({store_name} store, read models in {})",
        sink.kind()
    );
    let running = Runner::new(store.clone(), sink.clone(), Videos).spawn();

    let group = format!("transcoders-{run}");
    let definition = serde_json::json!({
        "name": group,
        "source": {"event_types": ["Uploaded"]},
        "start": "end",
        "settings": {"max_attempts": 3, "retry_backoff_ms": 10},
    });
    client
        .group_call(
            GroupCall::Create,
            GroupArgs {
                json: definition.to_string(),
                ..GroupArgs::default()
            },
        )
        .await?;

    // The workers: each a member of the group, reporting what it finished.
    let (done, mut finished) = tokio::sync::mpsc::channel::<(String, u64)>(1024);
    let mut members = Vec::new();
    for w in 1..=workers {
        let name = format!("w{w}");
        let mut member = client.join_group(&group, &name).await?;
        let (client, done) = (client.clone(), done.clone());
        members.push(tokio::spawn(async move {
            while let Some(Ok(d)) = member.next().await {
                match work(&client, &name, &d.event).await {
                    Ok(last) => {
                        d.ack().await?;
                        let _ = done.send((name.clone(), last)).await;
                    }
                    Err(e) => d.nack(&e.to_string()).await?,
                }
            }
            anyhow::Ok(())
        }));
    }

    println!(
        "\n1. {videos} videos uploaded; {workers} workers share them through a consumer group"
    );
    for n in 1..=videos {
        store
            .append(AppendRequest::stream(
                format!("video-{run}.{n}"),
                ExpectedRevision::NoStream,
                to_new(
                    &[VideoEvent::Uploaded {
                        title: format!("clip {n}"),
                    }],
                    &Context::new().with_actor("uploader"),
                )?,
            ))
            .await?;
    }
    let mut by_worker = std::collections::BTreeMap::<String, u32>::new();
    let mut last = 0;
    for _ in 0..videos {
        let (worker, position) = finished
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the workers stopped"))?;
        *by_worker.entry(worker).or_default() += 1;
        last = last.max(position);
    }
    for m in members {
        m.abort();
    }
    running.wait_for(last, READ_YOUR_WRITES).await?;
    let counts = sink
        .query(
            "SELECT status, count(*) FROM videos WHERE id LIKE $1 GROUP BY status ORDER BY status",
            &[format!("{run}.%").into()],
        )
        .await?;
    let counts: Vec<String> = counts
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r[1].as_int().unwrap_or(0),
                r[0].as_text().unwrap_or("?")
            )
        })
        .collect();
    println!(
        "   every video handled by one worker, in order: {}",
        counts.join(", ")
    );
    let shares: Vec<String> = by_worker.iter().map(|(w, n)| format!("{w} {n}")).collect();
    println!("   handled per worker: {}", shares.join(", "));

    println!("\n2. Stuck videos: processing, started more than 0s ago");
    for s in stuck(sink, &format!("{run}."), Duration::ZERO).await? {
        // Which worker had it changes from run to run.
        let (video, rest) = s.split_once(": processing by").unwrap_or((&s, ""));
        println!(
            "   {video}, {}",
            rest.rsplit(" at ").next().unwrap_or_default()
        );
    }

    println!("\n3. The field's failure story: a status update lost because the database was busy");
    let victim = format!("{run}.1");
    sink.execute(
        "UPDATE videos SET status = 'processing', progress = 80, finished_at = NULL WHERE id = $1",
        &[victim.as_str().into()],
    )
    .await?;
    let listed: Vec<String> = stuck(sink, &format!("{run}."), Duration::ZERO)
        .await?
        .iter()
        .map(|s| s.split(':').next().unwrap_or_default().to_string())
        .collect();
    println!(
        "   video 1 completed, but its row says processing: stuck now lists {}",
        listed.join(", ")
    );
    let history = annal_core::EventStoreExt::read_to_vec(
        store,
        annal_core::ReadRequest::stream(format!("video-{victim}")),
    )
    .await?;
    let told: Vec<String> = history
        .iter()
        .flat_map(|e| decode_recorded::<VideoEvent>(e, &Upcasters::new()).unwrap_or_default())
        .map(|e| match e {
            VideoEvent::Uploaded { .. } => "uploaded".to_string(),
            VideoEvent::ProcessingStarted { .. } => "started".into(),
            VideoEvent::Progressed { percent } => format!("{percent}%"),
            VideoEvent::Completed { output } => format!("completed ({output})"),
            VideoEvent::Failed { reason } => format!("failed ({reason})"),
        })
        .collect();
    println!("   the log of video 1 says: {}", told.join(", "));
    let r = Runner::new(store.clone(), sink.clone(), Videos)
        .reconcile(true)
        .await?;
    println!(
        "   replaying the events: {} row differs; repaired",
        r.differences.len()
    );
    let listed: Vec<String> = stuck(sink, &format!("{run}."), Duration::ZERO)
        .await?
        .iter()
        .map(|s| s.split(':').next().unwrap_or_default().to_string())
        .collect();
    println!("   stuck now lists {}", listed.join(", "));
    running.stop().await?;
    Ok(())
}
