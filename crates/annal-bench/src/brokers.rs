//! W10's peers: the same backlog drained by 1, 4 and 16 consumers acknowledging every
//! message, and the same one-at-a-time latency, on the NATS JetStream and RabbitMQ servers
//! of this machine (see [`crate::groups`] for what each makes durable).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::groups::{one_at_a_time, Figures, GroupSizes, CONSUMERS};
use crate::stats::payload;
use crate::Progress;

/// Counts acknowledgements until a target, and wakes whoever waits for it.
struct Counter {
    acked: AtomicU64,
    target: u64,
    done: tokio::sync::Notify,
    progress: Progress,
}

impl Counter {
    fn new(target: u64, progress: Progress) -> Arc<Counter> {
        Arc::new(Counter {
            acked: AtomicU64::new(0),
            target,
            done: tokio::sync::Notify::new(),
            progress,
        })
    }

    fn hit(&self) {
        self.progress.inc(1);
        if self.acked.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
    }

    async fn wait(&self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(600), self.done.notified())
            .await
            .map_err(|_| anyhow::anyhow!("the consumers did not finish in 10 minutes"))
    }
}

/// Messages published (and confirmed) at once at most.
const WINDOW: usize = 1024;

mod nats {
    pub use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
    pub use async_nats::jetstream::{self, stream};
}

async fn nats_stream(
    js: &nats::jetstream::Context,
    name: &str,
    subject: &str,
) -> anyhow::Result<nats::stream::Stream> {
    let _ = js.delete_stream(name).await;
    Ok(js
        .create_stream(nats::stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            storage: nats::stream::StorageType::File,
            retention: nats::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?)
}

async fn nats_consumer(stream: &nats::stream::Stream) -> anyhow::Result<nats::PullConsumer> {
    Ok(stream
        .create_consumer(nats::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: nats::AckPolicy::Explicit,
            max_ack_pending: 4096,
            ..Default::default()
        })
        .await?)
}

/// NATS JetStream: its version and settings, and W10's figures.
pub(crate) async fn nats(url: &str, s: &GroupSizes) -> anyhow::Result<(String, Figures)> {
    let client = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .map_err(|_| anyhow::anyhow!("no answer in 5 s"))??;
    let info = client.server_info();
    let about = format!(
        "nats-server {}, a file-storage work-queue stream, one durable pull consumer with explicit acks (max 4096 pending), the server's sync_interval (default 2 min: no fsync per message)",
        info.version
    );
    let js = nats::jetstream::new(client.clone());
    let mut drain = Vec::new();
    for n in CONSUMERS {
        let stream = nats_stream(&js, "ANNALBENCH", "annalbench.>").await?;
        let p = Progress::spinner("W10 nats backlog");
        let mut inflight = VecDeque::with_capacity(WINDOW);
        for i in 0..s.messages {
            let subject = format!("annalbench.{}", i % s.keys);
            inflight.push_back(js.publish(subject, payload(i).into()).await?);
            if inflight.len() >= WINDOW {
                if let Some(a) = inflight.pop_front() {
                    a.await?;
                }
            }
        }
        for a in inflight {
            a.await?;
        }
        p.done();
        let consumer = nats_consumer(&stream).await?;
        let counter = Counter::new(
            s.messages,
            Progress::new(&format!("W10 nats x{n}"), s.messages),
        );
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (c, counter) = (consumer.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    let mut msgs = c.stream().max_messages_per_batch(256).messages().await?;
                    while let Some(m) = msgs.next().await {
                        m.map_err(|e| anyhow::anyhow!("{e}"))?
                            .ack()
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        counter.hit();
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        counter.wait().await?;
        client.flush().await?;
        let secs = started.elapsed().as_secs_f64();
        counter.progress.done();
        for t in tasks {
            t.abort();
        }
        js.delete_stream("ANNALBENCH").await?;
        drain.push((n, s.messages as f64 / secs));
    }
    // Latency: one message at a time, 4 consumers.
    let stream = nats_stream(&js, "ANNALBENCHLIVE", "annalbenchlive.>").await?;
    let consumer = nats_consumer(&stream).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(1024);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (c, tx) = (consumer.clone(), tx.clone());
            tokio::spawn(async move {
                let mut msgs = c.stream().max_messages_per_batch(16).messages().await?;
                while let Some(Ok(m)) = msgs.next().await {
                    let _ = tx.send(Instant::now()).await;
                    let _ = m.ack().await;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let js2 = js.clone();
    let samples = one_at_a_time(s.latency_samples, &mut rx, |i| {
        let js = js2.clone();
        async move {
            js.publish(format!("annalbenchlive.{}", i % 64), payload(i).into())
                .await?
                .await?;
            Ok(())
        }
    })
    .await?;
    for t in tasks {
        t.abort();
    }
    js.delete_stream("ANNALBENCHLIVE").await?;
    Ok((about, Figures::new(drain, samples)))
}

mod amqp {
    pub use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    pub use lapin::types::{AMQPValue, FieldTable};
    pub use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
}

/// Declares a fresh durable quorum queue.
async fn rabbit_queue(ch: &amqp::Channel, q: &str) -> anyhow::Result<()> {
    ch.queue_delete(q.into(), amqp::QueueDeleteOptions::default())
        .await?;
    let mut args = amqp::FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        amqp::AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        q.into(),
        amqp::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    Ok(())
}

/// Publishes messages `from..to` as persistent messages with publisher confirms, `WINDOW`
/// unconfirmed at most.
async fn rabbit_publish(ch: &amqp::Channel, q: &str, from: u64, to: u64) -> anyhow::Result<()> {
    let props = amqp::BasicProperties::default().with_delivery_mode(2);
    let mut inflight = VecDeque::with_capacity(WINDOW);
    for i in from..to {
        let c = ch
            .basic_publish(
                "".into(),
                q.into(),
                amqp::BasicPublishOptions::default(),
                &payload(i),
                props.clone(),
            )
            .await?;
        inflight.push_back(c);
        if inflight.len() >= WINDOW {
            if let Some(c) = inflight.pop_front() {
                anyhow::ensure!(c.await?.is_ack(), "RabbitMQ refused a message");
            }
        }
    }
    for c in inflight {
        anyhow::ensure!(c.await?.is_ack(), "RabbitMQ refused a message");
    }
    Ok(())
}

/// `n` consumers on their own channels, each acking every message; each delivery's arrival
/// time goes to `arrivals` when given.
async fn rabbit_consumers(
    conn: &amqp::Connection,
    q: &str,
    n: usize,
    prefetch: u16,
    counter: Option<Arc<Counter>>,
    arrivals: Option<tokio::sync::mpsc::Sender<Instant>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch, amqp::BasicQosOptions::default())
            .await?;
        let mut consumer = ch
            .basic_consume(
                q.into(),
                format!("bench-{i}").as_str().into(),
                amqp::BasicConsumeOptions::default(),
                amqp::FieldTable::default(),
            )
            .await?;
        let (counter, arrivals) = (counter.clone(), arrivals.clone());
        tasks.push(tokio::spawn(async move {
            let _channel = ch;
            while let Some(d) = consumer.next().await {
                let d = d?;
                if let Some(a) = &arrivals {
                    let _ = a.send(Instant::now()).await;
                }
                d.ack(amqp::BasicAckOptions::default()).await?;
                if let Some(c) = &counter {
                    c.hit();
                }
            }
            anyhow::Ok(())
        }));
    }
    Ok(tasks)
}

/// RabbitMQ: its version and settings, and W10's figures.
pub(crate) async fn rabbitmq(url: &str, s: &GroupSizes) -> anyhow::Result<(String, Figures)> {
    let connect = || async {
        tokio::time::timeout(
            Duration::from_secs(5),
            amqp::Connection::connect(url, amqp::ConnectionProperties::default()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer in 5 s"))?
        .map_err(anyhow::Error::from)
    };
    let publisher = connect().await?;
    let about = format!(
        "RabbitMQ at {}, a durable quorum queue (fsynced before a publisher confirm), persistent messages, publisher confirms, a prefetch of 256 per consumer, manual acks",
        url.rsplit('@').next().unwrap_or(url)
    );
    let ch = publisher.create_channel().await?;
    ch.confirm_select(amqp::ConfirmSelectOptions::default())
        .await?;
    let q = "annal-bench";
    let mut drain = Vec::new();
    for n in CONSUMERS {
        rabbit_queue(&ch, q).await?;
        let p = Progress::spinner("W10 rabbitmq backlog");
        rabbit_publish(&ch, q, 0, s.messages).await?;
        p.done();
        let counter = Counter::new(
            s.messages,
            Progress::new(&format!("W10 rabbitmq x{n}"), s.messages),
        );
        // A connection of its own for each run's consumers, closed after it.
        let subscriber = connect().await?;
        let started = Instant::now();
        let tasks =
            rabbit_consumers(&subscriber, q, n, 256, Some(Arc::clone(&counter)), None).await?;
        counter.wait().await?;
        let secs = started.elapsed().as_secs_f64();
        counter.progress.done();
        for t in tasks {
            t.abort();
        }
        let _ = subscriber.close(200, "done".into()).await;
        drain.push((n, s.messages as f64 / secs));
    }
    // Latency: one message at a time, 4 consumers.
    let live = "annal-bench-live";
    rabbit_queue(&ch, live).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(1024);
    let subscriber = connect().await?;
    let tasks = rabbit_consumers(&subscriber, live, 4, 16, None, Some(tx)).await?;
    let samples = one_at_a_time(s.latency_samples, &mut rx, |i| {
        let ch = ch.clone();
        async move { rabbit_publish(&ch, live, i, i + 1).await }
    })
    .await?;
    for t in tasks {
        t.abort();
    }
    let _ = subscriber.close(200, "done".into()).await;
    for name in [q, live] {
        ch.queue_delete(name.into(), amqp::QueueDeleteOptions::default())
            .await?;
    }
    Ok((about, Figures::new(drain, samples)))
}
