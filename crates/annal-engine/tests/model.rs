//! Model-based test: random sequences of appends, retries, snapshot puts and deletes, reopens
//! and checkpoints run against the engine and against [`MemoryStore`], the reference model,
//! and after every operation the two must agree on the outcome and on everything a reader can
//! observe.
//!
//! Segments are tiny and checkpoints frequent, so segments roll and index runs are written and
//! merged while a sequence runs. The domains are small (four streams in two categories and events of no stream, three
//! event types, three tags, reused event ids), so expected-revision conflicts, DCB conditions
//! that fail, idempotent retries and event id conflicts all happen often.
//!
//! The first test keeps the store in a temporary folder. The second runs it on the simulated
//! file system, which adds power losses (recovery then replays the log since the last
//! checkpoint) and one bulk append per sequence (reads then take several index pages).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use annal_core::testkit::MemoryStore;
use annal_core::{
    AppendCondition, AppendRequest, AppendResult, AsOf, Error, EventStore, EventStoreExt,
    ExpectedRevision, ListCategories, ListStreams, Metadata, NewEvent, Query, QueryItem,
    ReadRequest, RecordedEvent, Selection, Source, StreamAppend, StreamInfo, Timestamp, Uuid,
};
use annal_engine::io::sim::SimFs;
use annal_engine::{Config, Store};
use proptest::prelude::*;
use tokio::runtime::Runtime;

/// The empty id is events of no stream.
const STREAMS: [&str; 5] = ["acct-1", "acct-2", "order-1", "order-2", ""];
/// Stream ids that are read and looked up but never written.
const ABSENT_STREAMS: [&str; 2] = ["acct-3", "acct"];
const CATEGORIES: [&str; 3] = ["acct", "order", "acc"];
const TYPES: [&str; 3] = ["Opened", "Deposited", "Closed"];
const TAGS: [&str; 3] = ["t:a", "t:b", "t:c"];

const SEGMENT_SIZE: u64 = 1024;
const CHECKPOINT_ENTRIES: usize = 30;

// ---------------------------------------------------------------------------------------------
// Operations, as generated (abstract; resolved into requests when run).
// ---------------------------------------------------------------------------------------------

/// Where an event's id comes from.
#[derive(Clone, Copy)]
enum IdSpec {
    /// An id never used before.
    Fresh,
    /// The id of an event built earlier in the sequence (`pick` modulo how many there are),
    /// with that event's exact content (`same`) or with this spec's content.
    Reuse { pick: usize, same: bool },
}

#[derive(Clone, Copy)]
struct EventSpec {
    id: IdSpec,
    event_type: usize,
    /// Bit `i` set: the event carries `TAGS[i]`.
    tags: u8,
    data: u8,
    /// A payload of several hundred bytes, so that one batch can fill a segment.
    big: bool,
    /// Non-default schema version, content type and metadata.
    rich: bool,
}

#[derive(Clone)]
struct BatchSpec {
    stream: usize,
    expected: ExpectedRevision,
    events: Vec<EventSpec>,
}

#[derive(Clone, Copy)]
struct ItemSpec {
    /// Bit `i` set: the item names `TYPES[i]`.
    types: u8,
    /// Bit `i` set: the item requires `TAGS[i]`.
    tags: u8,
}

#[derive(Clone)]
struct ConditionSpec {
    items: Vec<ItemSpec>,
    after: Option<u64>,
}

#[derive(Clone)]
struct AppendSpec {
    batches: Vec<BatchSpec>,
    condition: Option<ConditionSpec>,
}

#[derive(Clone)]
enum Op {
    Append(AppendSpec),
    /// Appends `count` new events to one stream in one batch (expecting any revision), enough
    /// to make reads of that stream, its category, its types and tags take several pages.
    /// Only the first of a sequence is run, as it makes every later step slower.
    Bulk {
        stream: usize,
        count: usize,
    },
    /// Sends again, unchanged, an earlier append request (`pick` modulo how many were sent).
    Retry(usize),
    /// Closes the engine and opens it again from the same folder.
    Reopen,
    /// Simulated power loss (only on the simulated file system): the engine is reopened from
    /// what a disk would have kept, without the checkpoint a close writes, so recovery
    /// replays the log written since the last checkpoint. `seed` picks how much of any
    /// unsynced bytes survives.
    PowerLoss {
        seed: u64,
    },
    /// Makes the engine write a checkpoint now.
    Checkpoint,
    /// Keeps a snapshot of a stream at a revision (which it may not have reached).
    Snapshot {
        stream: usize,
        revision: u64,
        data: u8,
    },
    /// Deletes a stream's snapshots.
    DeleteSnapshots {
        stream: usize,
    },
}

/// Parameters of the partial reads made after an operation.
#[derive(Clone, Copy)]
struct Probe {
    from: u64,
    limit: Option<u64>,
}

#[derive(Clone)]
struct Step {
    op: Op,
    probe: Probe,
}

fn mask_names<T: for<'a> From<&'a str>>(mask: u8, names: &[&str]) -> Vec<T> {
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| T::from(n))
        .collect()
}

impl fmt::Debug for EventSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let IdSpec::Reuse { same: true, .. } = self.id {
            return write!(f, "{:?}", self.id);
        }
        write!(f, "{:?} ", self.id)?;
        write!(
            f,
            "{}{:?} d{}",
            TYPES[self.event_type],
            mask_names::<String>(self.tags, &TAGS),
            self.data
        )?;
        if self.big {
            f.write_str(" big")?;
        }
        if self.rich {
            f.write_str(" rich")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BatchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} expect {:?} {:?}",
            STREAMS[self.stream], self.expected, self.events
        )
    }
}

impl fmt::Debug for ItemSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "types{:?} tags{:?}",
            mask_names::<String>(self.types, &TYPES),
            mask_names::<String>(self.tags, &TAGS)
        )
    }
}

impl fmt::Debug for AppendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("append ")?;
        for (i, b) in self.batches.iter().enumerate() {
            if i > 0 {
                f.write_str(" & ")?;
            }
            write!(f, "{b:?}")?;
        }
        if let Some(c) = &self.condition {
            write!(f, " {c:?}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConditionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unless {:?} after {:?}", self.items, self.after)
    }
}

impl fmt::Debug for IdSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdSpec::Fresh => f.write_str("new"),
            IdSpec::Reuse { pick, same: true } => write!(f, "same-as#{pick}"),
            IdSpec::Reuse { pick, same: false } => write!(f, "id-of#{pick}"),
        }
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Append(a) => write!(f, "{a:?}"),
            Op::Bulk { stream, count } => write!(f, "bulk {} x{count}", STREAMS[*stream]),
            Op::Retry(pick) => write!(f, "retry#{pick}"),
            Op::Reopen => f.write_str("reopen"),
            Op::PowerLoss { seed } => write!(f, "power-loss {seed}"),
            Op::Checkpoint => f.write_str("checkpoint"),
            Op::Snapshot {
                stream,
                revision,
                data,
            } => write!(f, "snapshot {}@{revision} ({data})", STREAMS[*stream]),
            Op::DeleteSnapshots { stream } => write!(f, "delete snapshots {}", STREAMS[*stream]),
        }
    }
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "probe from {} limit {:?}", self.from, self.limit)
    }
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}  ({:?})", self.op, self.probe)
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------------------------

fn expected_strategy() -> impl Strategy<Value = ExpectedRevision> {
    prop_oneof![
        8 => Just(ExpectedRevision::Any),
        1 => Just(ExpectedRevision::NoStream),
        1 => Just(ExpectedRevision::StreamExists),
        3 => (0u64..5).prop_map(ExpectedRevision::Exact),
    ]
}

fn event_strategy() -> impl Strategy<Value = EventSpec> {
    let id = prop_oneof![
        20 => Just(IdSpec::Fresh),
        2 => (0usize..64).prop_map(|pick| IdSpec::Reuse { pick, same: true }),
        1 => (0usize..64).prop_map(|pick| IdSpec::Reuse { pick, same: false }),
    ];
    (
        id,
        0..TYPES.len(),
        0u8..8,
        0u8..4,
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(id, event_type, tags, data, big, rich)| EventSpec {
            id,
            event_type,
            tags,
            data,
            big,
            rich,
        })
}

fn batch_strategy(stream: usize) -> impl Strategy<Value = BatchSpec> {
    (
        expected_strategy(),
        proptest::collection::vec(event_strategy(), 1..=4),
    )
        .prop_map(move |(expected, events)| BatchSpec {
            stream,
            expected,
            events,
        })
}

fn condition_strategy() -> impl Strategy<Value = ConditionSpec> {
    let item = (0u8..8, 0u8..8).prop_map(|(types, tags)| ItemSpec { types, tags });
    (
        proptest::collection::vec(item, 1..=2),
        proptest::option::of(0u64..20),
    )
        .prop_map(|(items, after)| ConditionSpec { items, after })
}

fn append_strategy() -> impl Strategy<Value = AppendSpec> {
    let n = STREAMS.len();
    // The second stream is usually another one; now and then the same (an invalid request).
    let streams = prop_oneof![
        12 => (0..n).prop_map(|a| vec![a]),
        7 => (0..n, 1..n).prop_map(move |(a, d)| vec![a, (a + d) % n]),
        1 => (0..n).prop_map(|a| vec![a, a]),
    ];
    let condition = prop_oneof![
        3 => Just(None),
        2 => condition_strategy().prop_map(Some),
    ];
    (streams, condition).prop_flat_map(|(streams, condition)| {
        let batches: Vec<_> = streams.into_iter().map(batch_strategy).collect();
        (batches, Just(condition))
            .prop_map(|(batches, condition)| AppendSpec { batches, condition })
    })
}

/// Which of the optional operations a test generates.
#[derive(Clone, Copy)]
struct Extras {
    /// Power losses: only when the store runs on the simulated file system.
    power_loss: bool,
    /// Bulk appends: every later read is several pages long, which makes steps slower.
    bulk: bool,
}

fn step_strategy(extras: Extras) -> impl Strategy<Value = Step> {
    let bulk =
        (0..STREAMS.len(), 257usize..300).prop_map(|(stream, count)| Op::Bulk { stream, count });
    let power_loss = any::<u64>().prop_map(|seed| Op::PowerLoss { seed });
    let op = prop_oneof![
        28 => append_strategy().prop_map(Op::Append),
        u32::from(extras.bulk) => bulk,
        6 => (0usize..64).prop_map(Op::Retry),
        4 => Just(Op::Reopen),
        2 => Just(Op::Checkpoint),
        4 * u32::from(extras.power_loss) => power_loss,
        4 => (0..STREAMS.len(), 0u64..12, any::<u8>())
            .prop_map(|(stream, revision, data)| Op::Snapshot { stream, revision, data }),
        1 => (0..STREAMS.len()).prop_map(|stream| Op::DeleteSnapshots { stream }),
    ];
    let probe =
        (0u64..64, proptest::option::of(0u64..6)).prop_map(|(from, limit)| Probe { from, limit });
    (op, probe).prop_map(|(op, probe)| Step { op, probe })
}

// ---------------------------------------------------------------------------------------------
// Running a sequence.
// ---------------------------------------------------------------------------------------------

type Check = Result<(), String>;

fn config() -> Config {
    // A heads cache of a few blocks: most heads of checkpointed streams are read from disk.
    Config::default()
        .segment_size(SEGMENT_SIZE)
        .checkpoint_entries(CHECKPOINT_ENTRIES)
        .head_cache_bytes(4096)
}

/// Where the engine keeps its files.
enum Backing {
    /// A temporary folder on the real file system.
    Disk(tempfile::TempDir),
    /// The simulated file system, which can lose power.
    Sim(SimFs),
}

impl Backing {
    fn disk() -> Backing {
        Backing::Disk(tempfile::tempdir().expect("a temporary folder"))
    }

    fn open(&self) -> annal_core::Result<Store> {
        match self {
            Backing::Disk(dir) => Store::open_with(dir.path(), config()),
            Backing::Sim(fs) => Store::open_with("/db", config().fs(Arc::new(fs.clone()))),
        }
    }
}

/// An append that was sent, with what each store answered.
struct Sent {
    request: AppendRequest,
    engine: annal_core::Result<AppendResult>,
    model: annal_core::Result<AppendResult>,
}

struct Harness {
    // Dropped in this order: the engine closes before its folder is removed.
    engine: Option<Store>,
    model: MemoryStore,
    backing: Backing,
    rt: Runtime,
    /// Every event built with a fresh id, in order: the pool reused ids are drawn from.
    minted: Vec<NewEvent>,
    sent: Vec<Sent>,
    /// The query of the latest DCB condition, read back after every operation.
    last_condition: Option<Query>,
    /// True once a bulk append has run.
    bulk_done: bool,
}

impl Harness {
    fn new(backing: Backing) -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let engine = backing.open().expect("opening the engine");
        Harness {
            engine: Some(engine),
            model: MemoryStore::new(),
            backing,
            rt,
            minted: Vec::new(),
            sent: Vec::new(),
            last_condition: None,
            bulk_done: false,
        }
    }

    fn engine(&self) -> &Store {
        self.engine.as_ref().expect("the engine is open")
    }

    /// Builds an event. A reused id that `taken` (the ids of the request so far) already holds
    /// is replaced by a fresh one: a request naming an id twice is merely invalid, and the
    /// same-stream batches already cover invalid requests.
    fn event(&mut self, spec: &EventSpec, taken: &[Uuid]) -> NewEvent {
        let reused = match spec.id {
            IdSpec::Reuse { pick, same } if !self.minted.is_empty() => {
                let original = &self.minted[pick % self.minted.len()];
                (!taken.contains(&original.id)).then(|| (original.clone(), same))
            }
            _ => None,
        };
        let fresh = reused.is_none();
        let id = match reused {
            Some((original, true)) => return original,
            Some((original, false)) => original.id,
            None => Uuid::from_u128(self.minted.len() as u128 + 1),
        };
        let data = if spec.big {
            format!("{{\"n\":{},\"pad\":\"{}\"}}", spec.data, "x".repeat(700)).into_bytes()
        } else {
            format!("{{\"n\":{}}}", spec.data).into_bytes()
        };
        let mut e = NewEvent::new(TYPES[spec.event_type], data).with_id(id);
        e.tags = mask_names(spec.tags, &TAGS);
        if spec.rich {
            e = e
                .with_schema_version(2 + u32::from(spec.data))
                .with_content_type("text/plain")
                .with_metadata(Metadata {
                    correlation_id: Some(Uuid::from_u128(0xc0 + u128::from(spec.data))),
                    causation_id: None,
                    actor: Some("alice".into()),
                    extra: BTreeMap::from([("k".to_string(), spec.data.to_string())]),
                });
        }
        if fresh {
            self.minted.push(e.clone());
        }
        e
    }

    fn request(&mut self, spec: &AppendSpec) -> AppendRequest {
        let mut taken = Vec::new();
        let mut streams = Vec::new();
        for b in &spec.batches {
            let mut events = Vec::new();
            for e in &b.events {
                let e = self.event(e, &taken);
                taken.push(e.id);
                events.push(e);
            }
            streams.push(StreamAppend::new(STREAMS[b.stream], b.expected, events));
        }
        let condition = spec.condition.as_ref().map(|c| AppendCondition {
            query: Query {
                items: c
                    .items
                    .iter()
                    .map(|i| QueryItem {
                        types: mask_names(i.types, &TYPES),
                        tags: mask_names(i.tags, &TAGS),
                    })
                    .collect(),
            },
            after: c.after,
        });
        if let Some(c) = &condition {
            self.last_condition = Some(c.query.clone());
        }
        AppendRequest { streams, condition }
    }

    /// Runs one step and compares the stores afterwards; the description of what was done is
    /// pushed onto `trace`. `last`: this is the sequence's last step.
    fn step(&mut self, step: &Step, last: bool, trace: &mut Vec<String>) -> Check {
        let head_before = self.model_head();
        match &step.op {
            Op::Append(spec) => {
                let request = self.request(spec);
                trace.push(format!("append {}", show_request(&request)));
                let (engine, model) = self.append_both(&request);
                trace.push(format!("  -> {}", show_outcome(&engine)));
                compare_outcome(&engine, &model, &request, &self.model.snapshot())?;
                self.sent.push(Sent {
                    request,
                    engine,
                    model,
                });
            }
            Op::Bulk { .. } if self.bulk_done => {
                trace.push("bulk append skipped: one per sequence".into());
            }
            Op::Bulk { stream, count } => {
                self.bulk_done = true;
                let events = (0..*count)
                    .map(|i| {
                        let spec = EventSpec {
                            id: IdSpec::Fresh,
                            event_type: i % TYPES.len(),
                            tags: (i % 8) as u8,
                            data: (i % 4) as u8,
                            big: false,
                            rich: false,
                        };
                        self.event(&spec, &[])
                    })
                    .collect();
                let request =
                    AppendRequest::stream(STREAMS[*stream], ExpectedRevision::Any, events);
                trace.push(format!(
                    "bulk append of {count} events to {} ({}..)",
                    STREAMS[*stream],
                    show_event(&request.streams[0].events[0])
                ));
                let (engine, model) = self.append_both(&request);
                trace.push(format!("  -> {}", show_outcome(&engine)));
                compare_outcome(&engine, &model, &request, &self.model.snapshot())?;
                self.sent.push(Sent {
                    request,
                    engine,
                    model,
                });
            }
            Op::Retry(pick) => {
                if self.sent.is_empty() {
                    trace.push("retry: nothing sent yet".into());
                } else {
                    let i = pick % self.sent.len();
                    let request = self.sent[i].request.clone();
                    trace.push(format!("retry of request #{i}: {}", show_request(&request)));
                    let (engine, model) = self.append_both(&request);
                    trace.push(format!("  -> {}", show_outcome(&engine)));
                    compare_outcome(&engine, &model, &request, &self.model.snapshot())?;
                    // A retry of an append that succeeded is answered with the original result,
                    // recorded_at included, by each store.
                    let before = &self.sent[i];
                    if let Ok(original) = &before.engine {
                        ensure_eq(&engine, &Ok(original.clone()), "engine: retry result")?;
                    }
                    if let Ok(original) = &before.model {
                        ensure_eq(&model, &Ok(original.clone()), "model: retry result")?;
                    }
                    self.sent.push(Sent {
                        request,
                        engine,
                        model,
                    });
                }
            }
            Op::Reopen => {
                trace.push("reopen".into());
                let store = self.engine.take().expect("the engine is open");
                store.close().map_err(|e| format!("close failed: {e:?}"))?;
                let store = self
                    .backing
                    .open()
                    .map_err(|e| format!("reopen failed: {e:?}"))?;
                self.engine = Some(store);
            }
            Op::PowerLoss { seed } => {
                trace.push("power loss".into());
                let Backing::Sim(fs) = &self.backing else {
                    return Err("power loss needs the simulated file system".into());
                };
                // Every acknowledged append is durable, so the model is unaffected.
                let image = fs.crash_image(Some(*seed));
                // The old store closes on its own file system, which is then discarded.
                drop(self.engine.take());
                self.backing = Backing::Sim(image);
                let store = self
                    .backing
                    .open()
                    .map_err(|e| format!("reopen after power loss failed: {e:?}"))?;
                self.engine = Some(store);
            }
            Op::Checkpoint => {
                trace.push("checkpoint".into());
                self.engine()
                    .checkpoint_blocking()
                    .map_err(|e| format!("checkpoint failed: {e:?}"))?;
            }
            Op::Snapshot {
                stream,
                revision,
                data,
            } => {
                let snapshot = annal_core::NewSnapshot::new(
                    STREAMS[*stream],
                    *revision,
                    1 + u32::from(data % 2),
                    format!("{{\"d\":{data}}}").into_bytes(),
                );
                trace.push(format!("snapshot {}@{revision}", STREAMS[*stream]));
                let engine = self.engine();
                let (e, m) = self.rt.block_on(async {
                    (
                        engine.put_snapshot(snapshot.clone()).await,
                        self.model.put_snapshot(snapshot).await,
                    )
                });
                trace.push(format!("  -> {e:?}"));
                ensure_eq(&e, &m, "put_snapshot")?;
            }
            Op::DeleteSnapshots { stream } => {
                trace.push(format!("delete snapshots of {}", STREAMS[*stream]));
                let engine = self.engine();
                let (e, m) = self.rt.block_on(async {
                    (
                        engine.delete_snapshots(STREAMS[*stream]).await,
                        self.model.delete_snapshots(STREAMS[*stream]).await,
                    )
                });
                trace.push(format!("  -> {e:?}"));
                ensure_eq(&e, &m, "delete_snapshots")?;
            }
        }
        // A forward scan of the whole log is by far the slowest read, so it is left out after
        // a step that changed nothing (a rejected or replayed append): the next step that
        // changes something, or the last step, scans the log again.
        let wrote = self.model_head() != head_before;
        let scan =
            last || wrote || matches!(step.op, Op::Reopen | Op::PowerLoss { .. } | Op::Checkpoint);
        let log = self.compare_state(step.probe, scan)?;
        // The events an append has just written carry the time its result reports.
        let appended = self.sent.last().filter(|_| wrote);
        if let Some(Ok(result)) = appended.map(|s| &s.engine) {
            let written = log
                .get(result.first_position as usize..=result.last_position as usize)
                .unwrap_or_default();
            let count = (result.last_position + 1 - result.first_position) as usize;
            ensure_eq(
                &written.iter().map(|e| e.recorded_at).collect::<Vec<_>>(),
                &vec![result.recorded_at; count],
                "engine: recorded_at of the events just appended vs the append result",
            )?;
        }
        Ok(())
    }

    fn model_head(&self) -> Option<u64> {
        self.rt
            .block_on(self.model.head())
            .expect("the model's head")
    }

    fn append_both(
        &self,
        request: &AppendRequest,
    ) -> (
        annal_core::Result<AppendResult>,
        annal_core::Result<AppendResult>,
    ) {
        let engine = self.engine();
        self.rt.block_on(async {
            (
                engine.append(request.clone()).await,
                self.model.append(request.clone()).await,
            )
        })
    }

    /// Compares everything a reader can observe; returns the engine's log.
    fn compare_state(&self, probe: Probe, scan: bool) -> Result<Vec<RecordedEvent>, String> {
        let engine = self.engine();
        let model = &self.model;
        self.rt.block_on(async {
            // The whole log, and the checks that need it. It is read backward: forward scans of
            // the whole log are the slowest reads, and at most one of them follows below.
            let mut log = compare_read(engine, model, ReadRequest::all().backward()).await?;
            log.reverse();
            for (i, e) in log.iter().enumerate() {
                ensure_eq(&e.position, &(i as u64), "engine: positions are gapless")?;
            }
            for pair in log.windows(2) {
                if pair[1].recorded_at < pair[0].recorded_at {
                    return Err(format!(
                        "engine: recorded_at decreases along the log:\n  {:?}\n  {:?}",
                        pair[0], pair[1]
                    ));
                }
            }
            let model_log = model.snapshot();
            check_position_at(engine, &log, "engine").await?;
            check_position_at(model, &model_log, "model").await?;
            ensure_eq(&engine.head().await, &model.head().await, "head of the log")?;

            let n = log.len() as u64;
            let pos = probe.from % (n + 2);
            let rev = probe.from % 8;
            let limited = |r: ReadRequest| match probe.limit {
                Some(l) => r.limit(l),
                None => r,
            };

            let mut reads = vec![
                limited(ReadRequest::all().from(pos).backward()),
                limited(ReadRequest::all().as_of(AsOf::Position(pos)).backward()),
            ];
            // A forward scan of the whole log, a different kind in turn.
            if scan {
                reads.push(match probe.from % 4 {
                    0 => ReadRequest::all(),
                    1 => limited(ReadRequest::all().from(pos)),
                    2 => ReadRequest::all().as_of(AsOf::Position(pos)),
                    _ => limited(ReadRequest::query(Query::all()).from(pos)),
                });
            }
            for s in STREAMS.iter().chain(&ABSENT_STREAMS) {
                reads.push(ReadRequest::stream(*s));
                reads.push(ReadRequest::stream(*s).backward());
                reads.push(limited(ReadRequest::stream(*s).from(rev)));
                reads.push(limited(ReadRequest::stream(*s).from(rev).backward()));
            }
            for c in CATEGORIES {
                reads.push(ReadRequest::category(c));
                reads.push(ReadRequest::category(c).backward());
                reads.push(limited(ReadRequest::category(c).from(pos)));
            }
            for types in [&TYPES[0..1], &TYPES[1..2], &TYPES[2..3], &TYPES[0..2]] {
                reads.push(ReadRequest::event_types(types.iter().copied()));
                reads.push(ReadRequest::event_types(types.iter().copied()).backward());
            }
            reads.push(limited(
                ReadRequest::event_types([TYPES[1]]).from(pos).backward(),
            ));
            reads.push(ReadRequest::query(Query::all()).backward());
            for c in [0xc0, 0xc1, 0xc9] {
                reads.push(ReadRequest::correlation(Uuid::from_u128(c)));
                reads.push(limited(
                    ReadRequest::correlation(Uuid::from_u128(c)).from(pos),
                ));
            }
            for a in ["alice", "bob"] {
                reads.push(ReadRequest::actor(a));
                reads.push(ReadRequest::actor(a).backward());
            }
            let selections = [
                Selection {
                    category: Some(CATEGORIES[0].into()),
                    stream_prefix: None,
                    query: Some(Query::item(QueryItem::tags([TAGS[0]]))),
                },
                Selection {
                    category: None,
                    stream_prefix: Some(STREAMS[0].into()),
                    query: Some(Query::item(QueryItem::types([TYPES[1]]))),
                },
                Selection {
                    category: None,
                    stream_prefix: Some("order".into()),
                    query: None,
                },
            ];
            for sel in selections {
                reads.push(ReadRequest::select(sel.clone()));
                reads.push(limited(ReadRequest::select(sel.clone()).from(pos)));
                reads.push(ReadRequest::select(sel).backward());
            }
            let mut queries = vec![
                Query::item(QueryItem::tags([TAGS[0]])),
                Query::item(QueryItem::tags([TAGS[0], TAGS[1]])),
                Query::item(QueryItem::types([TYPES[0]]).with_tags([TAGS[1]])),
                Query::item(QueryItem::types([TYPES[1], TYPES[2]])).or(QueryItem::tags([TAGS[2]])),
            ];
            queries.extend(self.last_condition.clone());
            for q in queries {
                reads.push(limited(ReadRequest::query(q.clone()).from(pos)));
                reads.push(ReadRequest::query(q.clone()).backward());
                reads.push(ReadRequest::query(q));
            }
            for r in reads {
                compare_read(engine, model, r).await?;
            }

            // Snapshots, as kept (when they were taken differs).
            for s in STREAMS.iter().chain(&ABSENT_STREAMS) {
                for at in [None, Some(rev), Some(rev + 3)] {
                    let shown = |r: annal_core::Result<Option<annal_core::Snapshot>>| {
                        r.map(|s| s.map(|s| (s.stream_id, s.revision, s.schema_version, s.data)))
                    };
                    ensure_eq(
                        &shown(engine.get_snapshot(s, at).await),
                        &shown(model.get_snapshot(s, at).await),
                        &format!("get_snapshot({s}, {at:?})"),
                    )?;
                }
            }

            // Stream heads, listings and categories.
            for s in STREAMS.iter().chain(&ABSENT_STREAMS) {
                let e = engine.stream_info(s).await;
                let m = model.stream_info(s).await;
                compare_info_result(&e, &m, &format!("stream_info({s})"))?;
                if let Ok(Some(info)) = &e {
                    check_info_times(info, &log)?;
                }
            }
            let listings = [
                ListStreams::default(),
                ListStreams {
                    prefix: Some("acct".into()),
                    ..Default::default()
                },
                ListStreams {
                    prefix: Some("order-".into()),
                    after: Some("acct-2".into()),
                    limit: 1,
                },
                ListStreams {
                    prefix: None,
                    after: Some("acct-1".into()),
                    limit: 2,
                },
                ListStreams {
                    prefix: Some("acct-".into()),
                    after: Some("acct-1".into()),
                    limit: 0,
                },
            ];
            for l in listings {
                let what = format!("list_streams({l:?})");
                let e = engine.list_streams(l.clone()).await;
                let m = model.list_streams(l).await;
                match (&e, &m) {
                    (Ok(e), Ok(m)) => {
                        ensure_eq(&e.len(), &m.len(), &format!("{what}: count"))?;
                        for (a, b) in e.iter().zip(m) {
                            compare_info(a, b, &what)?;
                            check_info_times(a, &log)?;
                        }
                    }
                    _ => ensure_eq(&e, &m, &what)?,
                }
            }
            let categories = [
                ListCategories::default(),
                ListCategories {
                    after: Some("acct".into()),
                    limit: 0,
                },
                ListCategories {
                    after: None,
                    limit: 1,
                },
            ];
            for l in categories {
                let what = format!("list_categories({l:?})");
                ensure_eq(
                    &engine.list_categories(l.clone()).await,
                    &model.list_categories(l).await,
                    &what,
                )?;
            }
            Ok(log)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons.
// ---------------------------------------------------------------------------------------------

fn ensure_eq<T: PartialEq + fmt::Debug>(engine: &T, model: &T, what: &str) -> Check {
    if engine == model {
        Ok(())
    } else {
        Err(format!(
            "{what} differs\n  engine: {engine:?}\n  model:  {model:?}"
        ))
    }
}

/// The event without `recorded_at`, which each store assigns from its own clock.
fn comparable(e: &RecordedEvent) -> RecordedEvent {
    RecordedEvent {
        recorded_at: Timestamp(0),
        ..e.clone()
    }
}

/// Reads from both stores, compares every field but `recorded_at`, and returns the engine's
/// events.
async fn compare_read(
    engine: &Store,
    model: &MemoryStore,
    request: ReadRequest,
) -> Result<Vec<RecordedEvent>, String> {
    let what = show_read(&request);
    let e = engine.read_to_vec(request.clone()).await;
    // The same read through views of the stored events gives the same events, and a visitor
    // that stops is given nothing after.
    let mut viewed = Vec::new();
    let v = engine
        .read_stored(request.clone())
        .and_then(|r| {
            r.visit(|s| {
                viewed.push(s.to_event());
                true
            })
        })
        .map(|()| viewed);
    ensure_eq(&v, &e, &format!("{what}, read as stored events"))?;
    // And a chunk at a time: the same events, with no chunk empty.
    let chunked = engine.read_chunks(request.clone()).and_then(|chunks| {
        let mut all = Vec::new();
        for chunk in chunks {
            let chunk = chunk?;
            if chunk.is_empty() {
                return Err(Error::Internal("an empty chunk".into()));
            }
            all.extend(chunk);
        }
        Ok(all)
    });
    ensure_eq(&chunked, &e, &format!("{what}, read a chunk at a time"))?;
    let mut first = Vec::new();
    let stopped = engine
        .read_stored(request.clone())
        .and_then(|r| {
            r.visit(|s| {
                first.push(s.to_event());
                first.len() < 2
            })
        })
        .map(|()| first);
    if let (Ok(stopped), Ok(all)) = (&stopped, &e) {
        ensure_eq(
            &stopped.as_slice(),
            &&all[..all.len().min(2)],
            &format!("{what}, read as stored events, stopped after two"),
        )?;
    }
    let m = model.read_to_vec(request).await;
    match (e, m) {
        (Ok(e), Ok(m)) => {
            let ec: Vec<_> = e.iter().map(comparable).collect();
            let mc: Vec<_> = m.iter().map(comparable).collect();
            if ec != mc {
                let ep: Vec<_> = e.iter().map(|e| e.position).collect();
                let mp: Vec<_> = m.iter().map(|e| e.position).collect();
                let first = ec.iter().zip(&mc).position(|(a, b)| a != b);
                let detail = match first {
                    Some(i) => format!(
                        "first difference at index {i}:\n  engine: {:?}\n  model:  {:?}",
                        ec[i], mc[i]
                    ),
                    None => "one is a prefix of the other".into(),
                };
                return Err(format!(
                    "{what}: events differ\n  engine positions: {ep:?}\n  model positions:  \
                     {mp:?}\n  {detail}"
                ));
            }
            Ok(e)
        }
        (e, m) => {
            ensure_eq(&e.map(|_| ()), &m.map(|_| ()), &what)?;
            Ok(Vec::new())
        }
    }
}

/// The outcome of an append: equal results but for `recorded_at`, or the same error.
///
/// An event id conflict is the exception: its `problem` is free text, and when several reused
/// ids are at fault a backend may name any of them (the conformance suite allows it). So both
/// must report a conflict, each about an id the request carries, and name that id's stored
/// stream and position.
fn compare_outcome(
    engine: &annal_core::Result<AppendResult>,
    model: &annal_core::Result<AppendResult>,
    request: &AppendRequest,
    model_log: &[RecordedEvent],
) -> Check {
    match (engine, model) {
        (Ok(e), Ok(m)) => {
            let strip = |r: &AppendResult| AppendResult {
                recorded_at: Timestamp(0),
                ..r.clone()
            };
            ensure_eq(&strip(e), &strip(m), "append result (but recorded_at)")
        }
        (Err(Error::EventIdConflict { .. }), Err(Error::EventIdConflict { .. })) => {
            check_id_conflict(engine, request, model_log, "engine")?;
            check_id_conflict(model, request, model_log, "model")
        }
        _ => ensure_eq(engine, model, "append outcome"),
    }
}

fn check_id_conflict(
    outcome: &annal_core::Result<AppendResult>,
    request: &AppendRequest,
    model_log: &[RecordedEvent],
    who: &str,
) -> Check {
    let Err(Error::EventIdConflict {
        event_id,
        stream,
        position,
        problem,
    }) = outcome
    else {
        return Err(format!("{who}: expected an event id conflict: {outcome:?}"));
    };
    let in_request = request
        .streams
        .iter()
        .flat_map(|s| &s.events)
        .any(|e| e.id == *event_id);
    let stored = model_log.iter().find(|e| e.id == *event_id);
    match stored {
        Some(stored)
            if in_request
                && stored.stream_id == *stream
                && stored.position == *position
                && !problem.is_empty() =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{who}: the id conflict does not name a stored id of the request as stored: \
             {outcome:?}\n  stored: {stored:?}"
        )),
    }
}

fn compare_info(engine: &StreamInfo, model: &StreamInfo, what: &str) -> Check {
    let strip = |i: &StreamInfo| StreamInfo {
        created_at: Timestamp(0),
        last_written_at: Timestamp(0),
        ..i.clone()
    };
    ensure_eq(&strip(engine), &strip(model), what)
}

fn compare_info_result(
    engine: &annal_core::Result<Option<StreamInfo>>,
    model: &annal_core::Result<Option<StreamInfo>>,
    what: &str,
) -> Check {
    match (engine, model) {
        (Ok(Some(e)), Ok(Some(m))) => compare_info(e, m, what),
        _ => ensure_eq(engine, model, what),
    }
}

/// The engine's stream times are those of the stream's first and last events in its log.
fn check_info_times(info: &StreamInfo, log: &[RecordedEvent]) -> Check {
    let at = |p: u64| log.get(p as usize).map(|e| e.recorded_at);
    ensure_eq(
        &Some(info.created_at),
        &at(info.first_position),
        &format!(
            "engine: created_at of {} vs its first event",
            info.stream_id
        ),
    )?;
    ensure_eq(
        &Some(info.last_written_at),
        &at(info.last_position),
        &format!(
            "engine: last_written_at of {} vs its last event",
            info.stream_id
        ),
    )
}

/// `position_at` agrees with the store's own log: at each recorded time, just before it, and
/// long after.
async fn check_position_at<S: EventStore>(store: &S, log: &[RecordedEvent], who: &str) -> Check {
    let expected = |t: Timestamp| {
        log.iter()
            .rev()
            .find(|e| e.recorded_at <= t)
            .map(|e| e.position)
    };
    let mut times: Vec<Timestamp> = log.iter().map(|e| e.recorded_at).collect();
    times.dedup();
    let probes = times
        .iter()
        .flat_map(|t| [*t, Timestamp(t.0 - 1)])
        .chain([Timestamp(0), Timestamp(i64::MAX)]);
    for t in probes {
        let got = store
            .position_at(t)
            .await
            .map_err(|e| format!("{who}: position_at({t:?}) failed: {e:?}"))?;
        ensure_eq(&got, &expected(t), &format!("{who}: position_at({t:?})"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Readable descriptions for failure messages.
// ---------------------------------------------------------------------------------------------

fn show_event(e: &NewEvent) -> String {
    let mut s = format!(
        "{}:{}{:?} {}",
        e.id.as_u128(),
        e.event_type,
        e.tags,
        String::from_utf8_lossy(&e.data)
            .chars()
            .take(12)
            .collect::<String>()
    );
    if e.schema_version != 1 || !e.metadata.is_empty() {
        s.push_str(&format!(" v{} {}", e.schema_version, e.content_type));
    }
    s
}

fn show_request(r: &AppendRequest) -> String {
    let mut s = r
        .streams
        .iter()
        .map(|b| {
            format!(
                "{} expect {:?} [{}]",
                b.stream_id,
                b.expected,
                b.events
                    .iter()
                    .map(show_event)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(" & ");
    if let Some(c) = &r.condition {
        s.push_str(&format!(
            " unless {:?} after {:?}",
            c.query
                .items
                .iter()
                .map(|i| (&i.types, &i.tags))
                .collect::<Vec<_>>(),
            c.after
        ));
    }
    s
}

fn show_outcome(o: &annal_core::Result<AppendResult>) -> String {
    match o {
        Ok(r) => format!(
            "ok positions {}..={} {:?}",
            r.first_position,
            r.last_position,
            r.streams
                .iter()
                .map(|s| (&s.stream_id, s.revision))
                .collect::<Vec<_>>()
        ),
        Err(e) => format!("error {e:?}"),
    }
}

fn show_read(r: &ReadRequest) -> String {
    let source = match &r.source {
        Source::All => "all".to_string(),
        Source::Stream(s) => format!("stream {s}"),
        Source::Category(c) => format!("category {c}"),
        Source::EventTypes(t) => format!("types {t:?}"),
        Source::Query(q) => format!(
            "query {:?}",
            q.items
                .iter()
                .map(|i| (&i.types, &i.tags))
                .collect::<Vec<_>>()
        ),
        Source::Correlation(c) => format!("correlation {c}"),
        Source::Actor(a) => format!("actor {a}"),
        Source::Select(s) => format!("select {s:?}"),
    };
    format!(
        "read {source} {:?} from {:?} limit {:?} as_of {:?}",
        r.direction, r.from, r.limit, r.as_of
    )
}

fn run(backing: Backing, steps: &[Step]) -> Check {
    let mut harness = Harness::new(backing);
    let mut trace = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if let Err(problem) = harness.step(step, i + 1 == steps.len(), &mut trace) {
            return Err(format!(
                "after step {i} ({step:?}):\n{problem}\n\nwhat was done:\n{}",
                trace.join("\n")
            ));
        }
    }
    if let Some(store) = harness.engine.take() {
        store.close().map_err(|e| format!("close failed: {e:?}"))?;
    }
    Ok(())
}

/// `default` cases unless `PROPTEST_CASES` asks for another number (a longer hunt).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]

    /// On a real folder, with reopens and checkpoints.
    #[test]
    fn engine_matches_the_memory_model(
        steps in proptest::collection::vec(
            step_strategy(Extras { power_loss: false, bulk: false }),
            1..60,
        )
    ) {
        run(Backing::disk(), &steps).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    /// On the simulated file system, with power losses and bulk appends as well.
    #[test]
    fn engine_matches_the_memory_model_across_power_loss(
        steps in proptest::collection::vec(
            step_strategy(Extras { power_loss: true, bulk: true }),
            1..60,
        )
    ) {
        run(Backing::Sim(SimFs::new()), &steps).map_err(TestCaseError::fail)?;
    }
}
