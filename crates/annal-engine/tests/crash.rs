//! Crash tests: a simulated power loss at every sync point, torn tails, and real SIGKILLs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use annal_core::{
    category_of, AppendRequest, EventStore, ExpectedRevision, ListCategories, ListStreams,
    NewEvent, ReadRequest, RecordedEvent, StreamAppend, StreamInfo, Uuid,
};
use annal_engine::io::sim::SimFs;
use annal_engine::io::Fs;
use annal_engine::{Config, Store};

fn sim_config(fs: &SimFs) -> Config {
    Config::default()
        .fs(Arc::new(fs.clone()))
        .segment_size(2048)
        .checkpoint_entries(40)
}

/// Without the preallocation thread, whose syncs come at times of their own: the same
/// workload then syncs the same number of times in every run.
fn sim_config_in_step(fs: &SimFs) -> Config {
    sim_config(fs).preallocate(0)
}

/// The requests of one writer thread: single events, batches and two-stream requests.
fn requests(thread: usize, n: usize) -> Vec<AppendRequest> {
    (0..n)
        .map(|i| {
            let stream = format!("acct{thread}-{}", i % 3);
            let events: Vec<NewEvent> = (0..(1 + i % 4))
                .map(|j| {
                    NewEvent::new("Moved", format!("{{\"t\":{thread},\"i\":{i},\"j\":{j}}}"))
                        .with_tag(format!("t:{thread}"))
                })
                .collect();
            let mut req = AppendRequest::stream(stream, ExpectedRevision::Any, events);
            if i % 5 == 4 {
                req = req.and(StreamAppend::new(
                    format!("ledger{thread}-x"),
                    ExpectedRevision::Any,
                    vec![NewEvent::new("Posted", b"{}".to_vec())],
                ));
            }
            req
        })
        .collect()
}

fn ids(req: &AppendRequest) -> Vec<Uuid> {
    req.streams
        .iter()
        .flat_map(|s| s.events.iter().map(|e| e.id))
        .collect()
}

/// Runs the workload until the store fails; returns every request and which were acknowledged.
fn run_workload(store: &Store) -> (Vec<AppendRequest>, Vec<AppendRequest>) {
    let all = Mutex::new(Vec::new());
    let acked = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..3 {
            let (all, acked) = (&all, &acked);
            s.spawn(move || {
                for req in requests(t, 12) {
                    all.lock().unwrap().push(req.clone());
                    match store.append_blocking(req.clone()) {
                        Ok(_) => acked.lock().unwrap().push(req),
                        Err(_) => return,
                    }
                }
            });
        }
    });
    (all.into_inner().unwrap(), acked.into_inner().unwrap())
}

/// Checks a reopened store against what was sent and acknowledged.
fn verify(store: &Store, all: &[AppendRequest], acked: &[AppendRequest]) {
    let events: Vec<RecordedEvent> = store
        .read_iter(ReadRequest::all())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64, "positions are gapless");
    }
    let present: HashMap<Uuid, &RecordedEvent> = events.iter().map(|e| (e.id, e)).collect();
    assert_eq!(present.len(), events.len(), "no event twice");
    for req in acked {
        for id in ids(req) {
            assert!(present.contains_key(&id), "acknowledged event {id} lost");
        }
    }
    let mut known = HashSet::new();
    for req in all {
        let ids = ids(req);
        let n = ids.iter().filter(|id| present.contains_key(id)).count();
        assert!(
            n == 0 || n == ids.len(),
            "a batch is half visible: {n} of {}",
            ids.len()
        );
        known.extend(ids);
    }
    assert!(
        events.iter().all(|e| known.contains(&e.id)),
        "an event nobody sent"
    );
    // Per stream: revisions gapless and the index agrees with the log.
    let mut by_stream: HashMap<&str, Vec<&RecordedEvent>> = HashMap::new();
    for e in &events {
        by_stream.entry(&e.stream_id).or_default().push(e);
    }
    for (stream, list) in by_stream {
        for (r, e) in list.iter().enumerate() {
            assert_eq!(e.revision, r as u64, "stream {stream} revisions gapless");
        }
        let read: Vec<u64> = store
            .read_iter(ReadRequest::stream(stream))
            .unwrap()
            .map(|e| e.unwrap().position)
            .collect();
        let want: Vec<u64> = list.iter().map(|e| e.position).collect();
        assert_eq!(read, want, "stream index of {stream} agrees with the log");
    }
    verify_heads(store, &events);
    // The store takes writes again.
    let r = store
        .append_blocking(AppendRequest::stream(
            "after-crash",
            ExpectedRevision::Any,
            vec![NewEvent::new("Again", b"{}".to_vec())],
        ))
        .unwrap();
    assert_eq!(r.first_position, events.len() as u64);
}

/// Stream infos, the stream listing and the category counts agree with the log.
fn verify_heads(store: &Store, events: &[RecordedEvent]) {
    let mut want: BTreeMap<String, StreamInfo> = BTreeMap::new();
    for e in events.iter().filter(|e| !e.stream_id.is_empty()) {
        let info = want
            .entry(e.stream_id.to_string())
            .or_insert_with(|| StreamInfo {
                stream_id: e.stream_id.to_string(),
                revision: 0,
                first_position: e.position,
                last_position: e.position,
                count: 0,
                created_at: e.recorded_at,
                last_written_at: e.recorded_at,
            });
        info.revision = e.revision;
        info.last_position = e.position;
        info.count += 1;
        info.last_written_at = e.recorded_at;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for (id, info) in &want {
            assert_eq!(
                store.stream_info(id).await.unwrap().as_ref(),
                Some(info),
                "the head of {id} agrees with the log"
            );
        }
        let listed = store
            .list_streams(ListStreams {
                prefix: None,
                after: None,
                limit: 0,
            })
            .await
            .unwrap();
        assert_eq!(listed, want.values().cloned().collect::<Vec<_>>());
        let mut categories: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for info in want.values() {
            let c = categories.entry(category_of(&info.stream_id)).or_default();
            c.0 += 1;
            c.1 += info.count;
        }
        let listed: BTreeMap<String, (u64, u64)> = store
            .list_categories(ListCategories {
                after: None,
                limit: 0,
            })
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.category, (c.stream_count, c.event_count)))
            .collect();
        let categories: BTreeMap<String, (u64, u64)> = categories
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(listed, categories, "category counts agree with the log");
    });
}

/// A store of many streams whose checkpoints have written a base and deltas of the heads,
/// then a power loss at every sync point of one more checkpoint after appends to old streams
/// (with and without a torn write), and once after it: the reopened store's heads agree
/// with its log. That checkpoint merges the newest delta from its file with the heads that
/// changed, and replaces it.
#[test]
fn power_loss_at_every_sync_point_of_an_incremental_checkpoint() {
    fn fill(store: &Store) -> Vec<AppendRequest> {
        let mut sent = Vec::new();
        for round in 0..6u64 {
            let appends: Vec<StreamAppend> = (0..40)
                .map(|i| {
                    StreamAppend::new(
                        format!("order-{}", (round * 7 + i * 3) % 150),
                        ExpectedRevision::Any,
                        vec![NewEvent::new("Placed", b"{}".to_vec())],
                    )
                })
                .collect();
            let req = AppendRequest {
                streams: appends,
                condition: None,
            };
            store.append_blocking(req.clone()).unwrap();
            store.checkpoint_blocking().unwrap();
            sent.push(req);
        }
        sent
    }
    fn touch(store: &Store) -> Vec<AppendRequest> {
        let reqs: Vec<AppendRequest> = (0..25)
            .map(|i| {
                AppendRequest::stream(
                    format!("order-{}", i * 5),
                    ExpectedRevision::Any,
                    vec![NewEvent::new("Shipped", b"{}".to_vec())],
                )
            })
            .collect();
        for r in &reqs {
            let _ = store.append_blocking(r.clone());
        }
        reqs
    }
    let config = |fs: &SimFs| sim_config_in_step(fs).checkpoint_entries(1 << 20);
    let fs = SimFs::new();
    let store = Store::open_with("/db", config(&fs)).unwrap();
    fill(&store);
    touch(&store);
    let heads_files = || -> HashSet<String> {
        fs.list(Path::new("/db"))
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with("heads-"))
            .collect()
    };
    let old = heads_files();
    let before = fs.syncs();
    store.checkpoint_blocking().unwrap();
    let after = fs.syncs();
    drop(store);
    let new = heads_files();
    assert_eq!(old.len(), 2, "a base and a delta: {old:?}");
    assert_eq!(
        (old.intersection(&new).count(), new.len()),
        (1, 2),
        "the base stays and the delta is replaced: {old:?}, then {new:?}"
    );
    assert!(
        after > before + 2,
        "the checkpoint synced {} times",
        after - before
    );
    // The last round crashes only after the checkpoint: the reopen starts from it.
    for k in before + 1..=after + 1 {
        for torn in [None, Some(k * 7919)] {
            let fs = SimFs::new();
            let store = Store::open_with("/db", config(&fs)).unwrap();
            let mut sent = fill(&store);
            sent.extend(touch(&store));
            assert_eq!(fs.syncs(), before, "the same work syncs as often");
            fs.crash_at_sync(k - before);
            let _ = store.checkpoint_blocking();
            assert_eq!(fs.crashed(), k <= after, "the checkpoint reached sync {k}");
            drop(store);
            let image = fs.crash_image(torn);
            let store = Store::open_with("/db", config(&image))
                .unwrap_or_else(|e| panic!("reopen after crash at sync {k} failed: {e}"));
            // The appends before the checkpoint were acknowledged: all of them are there.
            verify(&store, &sent, &sent);
        }
    }
}

#[test]
fn power_loss_at_every_sync_point() {
    power_loss_at_sync_points(sim_config_in_step, true);
}

/// The same with segments preallocated: records are written over synced zeros, and the
/// zeros' own syncs come at times of their own, so not every run reaches every sync point.
#[test]
fn power_loss_at_sync_points_with_preallocated_segments() {
    power_loss_at_sync_points(sim_config, false);
}

fn power_loss_at_sync_points(config: fn(&SimFs) -> Config, every: bool) {
    // Count the sync points of a full run first.
    let fs = SimFs::new();
    let store = Store::open_with("/db", config(&fs)).unwrap();
    let (all, acked) = run_workload(&store);
    assert_eq!(all.len(), acked.len());
    drop(store);
    let total = fs.syncs();
    assert!(
        total > 20,
        "the workload should sync often, synced {total} times"
    );
    eprintln!("crashing at each of {total} sync points, with and without torn writes");
    let mut crashes = 0;
    for k in 1..=total + 1 {
        for torn in [None, Some(k * 7919)] {
            let fs = SimFs::new();
            fs.crash_at_sync(k);
            let (all, acked) = match Store::open_with("/db", config(&fs)) {
                Ok(store) => {
                    let r = run_workload(&store);
                    drop(store);
                    r
                }
                Err(_) => (Vec::new(), Vec::new()),
            };
            crashes += usize::from(fs.crashed());
            let image = fs.crash_image(torn);
            let store = Store::open_with("/db", config(&image))
                .unwrap_or_else(|e| panic!("reopen after crash at sync {k} failed: {e}"));
            verify(&store, &all, &acked);
        }
    }
    // Runs with the zeros' syncs may end before a late sync point: most must crash.
    let wanted = if every { total } else { total / 2 };
    assert!(
        crashes as u64 >= wanted,
        "the runs crashed {crashes} times at {total} sync points, twice each"
    );
}

#[test]
fn writes_after_a_failed_sync_are_refused_and_reads_still_work() {
    let fs = SimFs::new();
    let store = Store::open_with("/db", sim_config(&fs)).unwrap();
    let first = store
        .append_blocking(AppendRequest::stream(
            "a-1",
            ExpectedRevision::Any,
            vec![NewEvent::new("A", b"{}".to_vec())],
        ))
        .unwrap();
    fs.crash_at_sync(1);
    let err = store
        .append_blocking(AppendRequest::stream(
            "a-1",
            ExpectedRevision::Any,
            vec![NewEvent::new("B", b"{}".to_vec())],
        ))
        .unwrap_err();
    assert!(matches!(err, annal_core::Error::Io { .. }), "{err:?}");
    let err = store
        .append_blocking(AppendRequest::stream(
            "a-1",
            ExpectedRevision::Any,
            vec![NewEvent::new("C", b"{}".to_vec())],
        ))
        .unwrap_err();
    assert!(matches!(err, annal_core::Error::Poisoned { .. }), "{err:?}");
    assert!(err.to_string().contains("reopen"), "{err}");
    let events: Vec<_> = store
        .read_iter(ReadRequest::all())
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].position, first.first_position);
}

#[test]
fn a_full_disk_is_reported_as_a_full_disk() {
    let fs = SimFs::new();
    // Without preallocation: zeros written ahead would hold the space the append needs.
    let store = Store::open_with("/db", sim_config_in_step(&fs)).unwrap();
    fs.set_space_left(Some(10));
    let err = store
        .append_blocking(AppendRequest::stream(
            "a-1",
            ExpectedRevision::Any,
            vec![NewEvent::new("A", vec![b'x'; 100])],
        ))
        .unwrap_err();
    assert!(matches!(err, annal_core::Error::DiskFull { .. }), "{err:?}");
    assert!(err.to_string().contains("disk is full"), "{err}");
    fs.set_space_left(None);
    drop(store);
    let store = Store::open_with("/db", sim_config(&fs.crash_image(Some(3)))).unwrap();
    assert_eq!(store.read_iter(ReadRequest::all()).unwrap().count(), 0);
}

fn seg_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn torn_tails_are_cut_and_acknowledged_events_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = 0u64;
    for round in 0..30u64 {
        let store = Store::open(dir.path()).unwrap();
        let n = store.read_iter(ReadRequest::all()).unwrap().count() as u64;
        assert_eq!(n, expected, "round {round}: acknowledged events survive");
        for i in 0..5 {
            store
                .append_blocking(AppendRequest::stream(
                    format!("s-{}", i % 2),
                    ExpectedRevision::Any,
                    vec![
                        NewEvent::new("E", vec![b'a'; 50 + i]),
                        NewEvent::new("F", b"{}".to_vec()),
                    ],
                ))
                .unwrap();
        }
        expected += 10;
        drop(store);
        let last = seg_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&last).unwrap();
        match round % 3 {
            // garbage after the last record
            0 => bytes.extend((0..(round * 13 % 200 + 1)).map(|x| (x * 31 + round) as u8)),
            // a record cut in half: a write that was never acknowledged
            1 => {
                let events = vec![NewEvent::new("Torn", vec![b'z'; 300])];
                let mut record = Vec::new();
                annal_engine::format::encode_batch(
                    &mut record,
                    expected,
                    annal_core::Timestamp::now(),
                    0,
                    &[annal_engine::format::BatchStream {
                        stream_id: "s-0",
                        first_revision: 0,
                        events: &events,
                    }],
                );
                let half = record.len() / 2 + (round as usize % 7);
                bytes.extend_from_slice(&record[..half]);
            }
            // a zeroed tail, as a crash after a file grew may leave
            _ => bytes.extend(std::iter::repeat_n(0u8, 4096)),
        }
        std::fs::write(&last, bytes).unwrap();
    }
}

/// Run as a child process by `sigkill_during_load_loses_nothing`: appends until killed,
/// printing each acknowledged request's first position and ids.
#[test]
#[ignore = "run by sigkill_during_load_loses_nothing as a child process"]
fn child_writer() {
    let Ok(dir) = std::env::var("ANNAL_CRASH_DIR") else {
        return;
    };
    let store = Arc::new(Store::open(&dir).unwrap());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    std::thread::scope(|s| {
        for t in 0..4 {
            let (store, out) = (store.clone(), out.clone());
            s.spawn(move || {
                for i in 0u64.. {
                    let events: Vec<NewEvent> = (0..(1 + i % 3))
                        .map(|_| NewEvent::new("K", format!("{{\"t\":{t}}}")))
                        .collect();
                    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                    let r = store
                        .append_blocking(AppendRequest::stream(
                            format!("k{t}-1"),
                            ExpectedRevision::Any,
                            events,
                        ))
                        .unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "{} {}", r.first_position, ids.join(",")).unwrap();
                    o.flush().unwrap();
                }
            });
        }
        // Snapshots of k0-1 at its last revision, each acknowledged as `S <revision> <n>`.
        let (store, out) = (store.clone(), out.clone());
        s.spawn(move || {
            for n in 0u64.. {
                let Some(last) = store
                    .read_iter(ReadRequest::stream("k0-1").backward().limit(1))
                    .unwrap()
                    .next()
                else {
                    continue;
                };
                let revision = last.unwrap().revision;
                let data = format!("snapshot {n}").into_bytes();
                store
                    .put_snapshot_blocking(annal_core::NewSnapshot::new("k0-1", revision, 1, data))
                    .unwrap();
                let mut o = out.lock().unwrap();
                writeln!(o, "S {revision} {n}").unwrap();
                o.flush().unwrap();
            }
        });
    });
}

/// A line of the child writer: an acknowledged append, or an acknowledged snapshot.
enum Acked {
    Append(u64, Vec<Uuid>),
    Snapshot(u64, u64),
}

fn parse_acked(line: &str) -> Option<Acked> {
    if let Some(rest) = line.strip_prefix("S ") {
        let (revision, n) = rest.split_once(' ')?;
        return Some(Acked::Snapshot(revision.parse().ok()?, n.parse().ok()?));
    }
    let (pos, ids) = line.split_once(' ')?;
    let ids = ids
        .split(',')
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    Some(Acked::Append(pos.parse().ok()?, ids))
}

#[test]
fn sigkill_during_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(u64, Vec<Uuid>)> = Vec::new();
    let mut last_snapshot: Option<(u64, u64)> = None;
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ANNAL_CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let want = 50 + round * 40;
        let mut got = 0;
        let mut record = |line: &str, got: &mut u64| match parse_acked(line) {
            Some(Acked::Append(pos, ids)) => {
                acked.push((pos, ids));
                *got += 1;
            }
            Some(Acked::Snapshot(revision, n)) => last_snapshot = Some((revision, n)),
            None => {}
        };
        while got < want {
            let Some(Ok(line)) = lines.next() else { break };
            record(&line, &mut got);
        }
        child.kill().unwrap();
        // Lines already printed were acknowledged before the kill.
        for line in lines.map_while(Result::ok) {
            record(&line, &mut got);
        }
        child.wait().unwrap();
        assert!(got > 0, "round {round}: the child wrote nothing");
        let store = Store::open(dir.path()).unwrap();
        let events: Vec<RecordedEvent> = store
            .read_iter(ReadRequest::all())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.position, i as u64);
        }
        let ids: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), events.len(), "no event twice");
        for (pos, batch) in &acked {
            for (k, id) in batch.iter().enumerate() {
                let e = events
                    .get((*pos as usize) + k)
                    .unwrap_or_else(|| panic!("acknowledged position {} lost", pos + k as u64));
                assert_eq!(e.id, *id, "acknowledged event at its position");
            }
        }
        // The last acknowledged snapshot, or one put after it, is kept.
        if let Some((revision, n)) = last_snapshot {
            let kept = store
                .get_snapshot_now("k0-1", Some(revision))
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged snapshot at revision {revision} lost"));
            let data = String::from_utf8(kept.data.to_vec()).unwrap();
            let kept_n: u64 = data.strip_prefix("snapshot ").unwrap().parse().unwrap();
            assert!(
                kept.revision == revision && kept_n >= n,
                "snapshot {n} at revision {revision} acknowledged, {data} at {} kept",
                kept.revision
            );
        }
    }
    assert!(last_snapshot.is_some(), "the child kept no snapshot");
}

#[test]
fn damage_inside_the_log_is_not_taken_for_a_torn_tail() {
    let fs = SimFs::new();
    let config = sim_config(&fs)
        .checkpoint_entries(1_000_000)
        .segment_size(1 << 20);
    let store = Store::open_with("/db", config.clone()).unwrap();
    for i in 0..10 {
        store
            .append_blocking(AppendRequest::stream(
                "s-1",
                ExpectedRevision::Any,
                vec![NewEvent::new("E", vec![b'x'; 100 + i])],
            ))
            .unwrap();
    }
    let image = fs.crash_image(None);
    drop(store);
    let seg = Path::new("/db/segments/00000000000000000000.seg");
    let mut bytes = image.read_file(seg).unwrap();
    bytes[64 + 200] ^= 0x10;
    image.write_file(seg, bytes);
    let err = Store::open_with("/db", config.fs(Arc::new(image)))
        .err()
        .expect("refuses to open");
    assert!(err.to_string().contains("not a torn final write"), "{err}");
}

#[test]
fn a_torn_unsynced_record_followed_by_an_intact_one_is_a_torn_write() {
    let fs = SimFs::new();
    // The records are put at the end of the file by hand: no preallocated zeros there.
    let config = sim_config_in_step(&fs)
        .checkpoint_entries(1_000_000)
        .segment_size(1 << 20);
    let store = Store::open_with("/db", config.clone()).unwrap();
    for _ in 0..3 {
        store
            .append_blocking(AppendRequest::stream(
                "s-1",
                ExpectedRevision::Any,
                vec![NewEvent::new("E", b"{}".to_vec())],
            ))
            .unwrap();
    }
    let image = fs.crash_image(None);
    drop(store);
    let seg = Path::new("/db/segments/00000000000000000000.seg");
    let mut bytes = image.read_file(seg).unwrap();
    // Two records written after the last sync (in one write or two pipelined ones, both
    // carry the same watermark): write-back kept the second whole but tore the first.
    let synced_up_to = bytes.len() as u64 - 64;
    let a = vec![NewEvent::new("Lost", vec![b'a'; 200])];
    let b = vec![NewEvent::new("Lost", vec![b'b'; 200])];
    let mut write = Vec::new();
    let stream = |events| annal_engine::format::BatchStream {
        stream_id: "s-2",
        first_revision: 0,
        events,
    };
    annal_engine::format::encode_batch(
        &mut write,
        3,
        annal_core::Timestamp::now(),
        synced_up_to,
        &[stream(&a)],
    );
    let first_len = write.len();
    annal_engine::format::encode_batch(
        &mut write,
        4,
        annal_core::Timestamp::now(),
        synced_up_to,
        &[stream(&b)],
    );
    write[first_len / 2] ^= 0xff;
    bytes.extend_from_slice(&write);
    image.write_file(seg, bytes);
    let store = Store::open_with("/db", config.fs(Arc::new(image))).unwrap();
    let events: Vec<_> = store
        .read_iter(ReadRequest::all())
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(
        events.len(),
        3,
        "the unacknowledged write is cut, the acknowledged events stay"
    );
}

fn one_event(store: &Store, stream: &str, data: Vec<u8>) -> annal_core::AppendResult {
    store
        .append_blocking(AppendRequest::stream(
            stream,
            ExpectedRevision::Any,
            vec![NewEvent::new("E", data)],
        ))
        .unwrap()
}

/// The length of `path` once the preallocation thread has written every zero due: past `at`.
fn zeros_past(store: &Store, path: &Path, at: u64) -> u64 {
    store.wait_preallocated();
    let len = std::fs::metadata(path).unwrap().len();
    assert!(
        len > at,
        "{} was not preallocated past {at} bytes",
        path.display()
    );
    len
}

#[test]
fn preallocated_zeros_are_no_events_and_appends_go_on_at_the_end_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .segment_size(256 << 10)
        .preallocate(1 << 20)
        .checkpoint_entries(1_000_000);
    let seg = dir.path().join("segments/00000000000000000000.seg");
    let mut ids = Vec::new();
    for round in 0..3 {
        let store = Store::open_with(dir.path(), config.clone()).unwrap();
        for i in 0..20 {
            let r = one_event(&store, &format!("s-{round}"), vec![b'x'; 50 + i]);
            assert_eq!(
                r.first_position,
                ids.len() as u64,
                "appends go on at the end"
            );
            ids.push(r.first_position);
        }
        if round == 0 {
            // The records take a few KiB; zeros follow them up to the segment size.
            zeros_past(&store, &seg, 128 << 10);
        }
        drop(store);
    }
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    let events = all_events(&store);
    assert_eq!(events.len(), 60, "zeros are read as the end of the log");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64);
    }
    drop(store);
    let report = annal_engine::check::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report.notes.is_empty(),
        "zeros are no torn tail: {:?}",
        report.notes
    );
}

#[test]
fn preallocation_rests_while_each_sync_makes_much_durable() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .preallocate(8 << 20)
        .checkpoint_entries(1_000_000);
    let seg = dir.path().join("segments/00000000000000000000.seg");
    let store = Store::open_with(dir.path(), config).unwrap();
    // Small appends: zeros run ahead of the log.
    for _ in 0..20 {
        one_event(&store, "small", vec![b'x'; 100]);
    }
    zeros_past(&store, &seg, 128 << 10);
    // Appends of 256 KiB, each synced alone: after a few, no zeros are written any more,
    // so the log soon passes the zeros written before and the file ends at its last
    // record (whose last bytes are the event's data).
    for _ in 0..80 {
        one_event(&store, "large", vec![b'x'; 256 << 10]);
    }
    // Whatever zeros the thread still meant to write are written now.
    store.wait_preallocated();
    let bytes = std::fs::read(&seg).unwrap();
    assert!(
        bytes.len() > 80 * (256 << 10),
        "the large appends are in the segment"
    );
    assert_eq!(
        &bytes[bytes.len() - 8..],
        b"xxxxxxxx",
        "no zeros after the last record ({} bytes)",
        bytes.len()
    );
    drop(store);
}

#[test]
fn segments_before_the_last_end_at_their_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .segment_size(4096)
        .preallocate(64 << 10)
        .checkpoint_entries(1_000_000);
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    for i in 0..200u64 {
        one_event(&store, &format!("s-{}", i % 7), vec![b'y'; 100]);
    }
    drop(store);
    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    assert!(
        segs.len() > 3,
        "the workload rolls segments: {}",
        segs.len()
    );
    // Every rolled segment was cut to its records: the next one starts where it ends,
    // which `check` verifies against each header.
    let report = annal_engine::check::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.events, 200);
    let store = Store::open_with(dir.path(), config).unwrap();
    assert_eq!(
        one_event(&store, "after", b"{}".to_vec()).first_position,
        200
    );
}

/// A store of three acknowledged records of one size, as a power loss leaves it: the
/// config, the image, the first segment's bytes and the size of one record.
fn three_records() -> (Config, SimFs, Vec<u8>, usize) {
    let fs = SimFs::new();
    let config = sim_config(&fs)
        .checkpoint_entries(1_000_000)
        .segment_size(1 << 20);
    let store = Store::open_with("/db", config.clone()).unwrap();
    for _ in 0..3 {
        one_event(&store, "s-1", vec![b'z'; 100]);
    }
    let image = fs.crash_image(None);
    drop(store);
    let bytes = image.read_file(Path::new(FIRST_SEGMENT)).unwrap();
    let record = (bytes.iter().rposition(|&b| b != 0).unwrap() + 1 - 64) / 3;
    (config, image, bytes, record)
}

const FIRST_SEGMENT: &str = "/db/segments/00000000000000000000.seg";

fn all_events(store: &Store) -> Vec<RecordedEvent> {
    store
        .read_iter(ReadRequest::all())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn zeros_over_a_synced_record_before_an_intact_one_are_damage() {
    let (config, image, mut bytes, record) = three_records();
    // Zero the second record whole. It was synced before the third was written, whose
    // watermark says so.
    bytes[64 + record..64 + 2 * record].fill(0);
    image.write_file(Path::new(FIRST_SEGMENT), bytes);
    let err = Store::open_with("/db", config.fs(Arc::new(image)))
        .err()
        .expect("refuses to open");
    assert!(err.to_string().contains("not a torn final write"), "{err}");
}

#[test]
fn zeros_where_the_last_unsynced_record_was_are_the_end_of_the_log() {
    let (config, image, mut bytes, record) = three_records();
    // The last record never reached the disk but for a few bytes of its end.
    bytes[64 + 2 * record..64 + 3 * record - 5].fill(0);
    image.write_file(Path::new(FIRST_SEGMENT), bytes);
    let store = Store::open_with("/db", config.fs(Arc::new(image))).unwrap();
    assert_eq!(all_events(&store).len(), 2, "the log ends at the zeros");
    assert_eq!(one_event(&store, "s-2", b"{}".to_vec()).first_position, 2);
    assert_eq!(
        all_events(&store).len(),
        3,
        "the bytes left of the lost record are gone"
    );
}

/// One step of the snapshot workload.
#[derive(Clone, Debug)]
enum SnapOp {
    Append(String),
    Put(String, u64, String),
    Delete(String),
}

/// What a stream's snapshots should be: (revision, data) by revision.
type Kept = HashMap<String, Vec<(u64, String)>>;

fn apply(model: &mut Kept, op: &SnapOp) {
    match op {
        SnapOp::Append(_) => {}
        SnapOp::Put(s, r, d) => {
            let list = model.entry(s.clone()).or_default();
            annal_core::keep_snapshot(list, (*r, d.clone()), |k| k.0);
        }
        SnapOp::Delete(s) => {
            model.remove(s);
        }
    }
}

/// Appends, snapshot puts and deletes on three streams, until the store fails; returns the
/// model of every acknowledged step and the step in flight when it failed.
fn run_snapshot_workload(store: &Store) -> (Kept, Option<SnapOp>) {
    let mut model = Kept::new();
    let mut revisions: HashMap<String, u64> = HashMap::new();
    for i in 0..30u64 {
        let stream = format!("snap-{}", i % 3);
        let mut ops = vec![SnapOp::Append(stream.clone())];
        let rev = revisions.get(&stream).map_or(0, |r| r + 1);
        ops.push(SnapOp::Put(
            stream.clone(),
            rev,
            format!(
                "{stream} at {rev} (step {i}) {}",
                "x".repeat((i % 5 * 40) as usize)
            ),
        ));
        if i % 7 == 6 {
            ops.push(SnapOp::Delete(stream.clone()));
        }
        for op in ops {
            let done =
                match &op {
                    SnapOp::Append(s) => store
                        .append_blocking(AppendRequest::stream(
                            s.clone(),
                            ExpectedRevision::Any,
                            vec![NewEvent::new("Counted", b"{}".to_vec())],
                        ))
                        .map(|_| ()),
                    SnapOp::Put(s, r, d) => store.put_snapshot_blocking(
                        annal_core::NewSnapshot::new(s.clone(), *r, 1, d.clone().into_bytes()),
                    ),
                    SnapOp::Delete(s) => store.delete_snapshots_blocking(s).map(|_| ()),
                };
            if done.is_err() {
                return (model, Some(op));
            }
            if let SnapOp::Append(s) = &op {
                revisions.insert(s.clone(), rev);
            }
            apply(&mut model, &op);
        }
    }
    (model, None)
}

/// Every snapshot the store keeps for each of the workload's streams.
fn kept_snapshots(store: &Store) -> Kept {
    let mut out = Kept::new();
    for k in 0..3 {
        let stream = format!("snap-{k}");
        let mut list = Vec::new();
        let mut at = None;
        while let Some(s) = store.get_snapshot_now(&stream, at).unwrap() {
            list.push((s.revision, String::from_utf8(s.data.to_vec()).unwrap()));
            let Some(before) = s.revision.checked_sub(1) else {
                break;
            };
            at = Some(before);
        }
        list.reverse();
        if !list.is_empty() {
            out.insert(stream, list);
        }
    }
    out
}

/// A power loss at every sync point of a run of snapshot puts and deletes (with the snapshot
/// file compacted along the way): every acknowledged put is kept unless a later
/// acknowledged step dropped it, every acknowledged delete stays done, and the step in
/// flight is either done whole or not at all.
#[test]
fn power_loss_at_every_snapshot_sync_point() {
    let config = |fs: &SimFs| sim_config_in_step(fs).snapshot_compact_after(512);
    let fs = SimFs::new();
    let store = Store::open_with("/db", config(&fs)).unwrap();
    let (model, failed) = run_snapshot_workload(&store);
    assert!(failed.is_none());
    assert_eq!(kept_snapshots(&store), model);
    drop(store);
    let files = annal_engine::io::Fs::list(&fs, Path::new("/db/snapshots")).unwrap();
    assert!(
        files.len() == 1 && !files[0].starts_with("0000000000000001"),
        "the workload compacts the snapshot file: {files:?}"
    );
    let total = fs.syncs();
    let mut crashes = 0;
    for k in 1..=total + 1 {
        for torn in [None, Some(k * 104_729)] {
            let fs = SimFs::new();
            fs.crash_at_sync(k);
            let (model, in_flight) = match Store::open_with("/db", config(&fs)) {
                Ok(store) => run_snapshot_workload(&store),
                Err(_) => (Kept::new(), None),
            };
            crashes += usize::from(fs.crashed());
            let image = fs.crash_image(torn);
            let store = Store::open_with("/db", config(&image))
                .unwrap_or_else(|e| panic!("reopen after crash at sync {k} failed: {e}"));
            let found = kept_snapshots(&store);
            let mut with_step = model.clone();
            if let Some(op) = &in_flight {
                apply(&mut with_step, op);
            }
            assert!(
                found == model || found == with_step,
                "crash at sync {k} (torn {torn:?}), step in flight {in_flight:?}:\nfound {found:?}\nacknowledged {model:?}"
            );
            // The store takes snapshots again.
            store
                .append_blocking(AppendRequest::stream(
                    "snap-0",
                    ExpectedRevision::Any,
                    vec![NewEvent::new("Counted", b"{}".to_vec())],
                ))
                .unwrap();
            store
                .put_snapshot_blocking(annal_core::NewSnapshot::new(
                    "snap-0",
                    0,
                    1,
                    b"again".to_vec(),
                ))
                .unwrap();
        }
    }
    assert!(
        crashes as u64 >= total,
        "the runs crashed {crashes} times at {total} sync points, twice each"
    );
}
