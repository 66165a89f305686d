use annal_core::{
    AppendRequest, EventStore, EventStoreExt, ExpectedRevision, NewEvent, ReadRequest,
};
use annal_engine::Store;

#[tokio::test]
async fn append_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 0..10 {
            let r =
                store
                    .append(AppendRequest::stream(
                        "account-1",
                        if i == 0 {
                            ExpectedRevision::NoStream
                        } else {
                            ExpectedRevision::Exact(i - 1)
                        },
                        vec![NewEvent::new("Deposited", format!("{{\"n\":{i}}}"))
                            .with_tag("account:1")],
                    ))
                    .await
                    .unwrap();
            assert_eq!(r.revision(), i);
        }
        let evs = store
            .read_to_vec(ReadRequest::stream("account-1"))
            .await
            .unwrap();
        assert_eq!(evs.len(), 10);
        store.close().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let evs = store
        .read_to_vec(ReadRequest::all().backward())
        .await
        .unwrap();
    assert_eq!(
        evs.iter().map(|e| e.position).collect::<Vec<_>>(),
        (0..10).rev().collect::<Vec<_>>()
    );
    assert_eq!(store.head().await.unwrap(), Some(9));
}

fn one(stream: &str, i: u64) -> AppendRequest {
    AppendRequest::stream(
        stream,
        ExpectedRevision::Any,
        vec![NewEvent::new("Deposited", format!("{{\"n\":{i}}}")).with_tag(format!("t:{}", i % 3))],
    )
}

/// Appends 200 single events to seven streams of the category `acct`, tagged `t:0` to `t:2`.
async fn fill(store: &Store) {
    for i in 0..200 {
        store
            .append(one(&format!("acct-{}", i % 7), i))
            .await
            .unwrap();
    }
}

/// Checks the events `fill` wrote by tag and by stream.
async fn check_filled(store: &Store) {
    let tagged = store
        .read_to_vec(ReadRequest::query(annal_core::Query::item(
            annal_core::QueryItem::tags(["t:1"]),
        )))
        .await
        .unwrap();
    assert_eq!(tagged.len(), (0..200).filter(|i| i % 3 == 1).count());
    let info = store.stream_info("acct-3").await.unwrap().unwrap();
    assert_eq!(info.count, (0..200).filter(|i| i % 7 == 3).count() as u64);
    let stream = store
        .read_to_vec(ReadRequest::stream("acct-3"))
        .await
        .unwrap();
    assert_eq!(stream.len() as u64, info.count);
}

#[tokio::test]
async fn a_store_of_another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap().close().unwrap();
    let seg = dir.path().join("segments").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, bytes).unwrap();
    let err = Store::open(dir.path()).err().expect("refused");
    assert!(
        matches!(
            err,
            annal_core::Error::UnsupportedFormat {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("format version 2"), "{err}");
}

#[tokio::test]
async fn indexes_are_rebuilt_from_the_log_when_the_checkpoint_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let config = annal_engine::Config::default().checkpoint_entries(50);
    {
        let store = Store::open_with(dir.path(), config.clone()).unwrap();
        fill(&store).await;
        store.close().unwrap();
    }
    let before = {
        let store = Store::open_with(dir.path(), config.clone()).unwrap();
        store
            .read_to_vec(ReadRequest::category("acct"))
            .await
            .unwrap()
    };
    std::fs::remove_file(dir.path().join("manifest")).unwrap();
    for f in std::fs::read_dir(dir.path().join("index")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let store = Store::open_with(dir.path(), config).unwrap();
    assert_eq!(
        store
            .read_to_vec(ReadRequest::category("acct"))
            .await
            .unwrap(),
        before
    );
    check_filled(&store).await;
}

/// A store (checkpoints every 50 entries) filled by `fill` and closed: its folder, its
/// configuration and every event.
async fn filled_store() -> (
    tempfile::TempDir,
    annal_engine::Config,
    Vec<annal_core::RecordedEvent>,
) {
    let dir = tempfile::tempdir().unwrap();
    let config = annal_engine::Config::default().checkpoint_entries(50);
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    fill(&store).await;
    let events = store.read_to_vec(ReadRequest::all()).await.unwrap();
    store.close().unwrap();
    (dir, config, events)
}

/// Opening the store fails: a file of version `found` where this build reads `supported`.
fn assert_refused(dir: &std::path::Path, config: annal_engine::Config, found: u32, supported: u32) {
    let err = Store::open_with(dir, config).err().expect("refused");
    let refused = matches!(
        err,
        annal_core::Error::UnsupportedFormat { found: f, supported: s, .. } if f == found && s == supported
    );
    assert!(refused, "{err:?}");
}

/// `annal check` finds no problem in the store and a note that says `note`.
fn assert_noted(dir: &std::path::Path, note: &str) {
    let report = annal_engine::check::check(dir, &mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report.notes.iter().any(|n| n.contains(note)),
        "{:?}",
        report.notes
    );
}

/// Sets the version field of the store's manifest (and its checksum).
fn set_manifest_version(dir: &std::path::Path, version: u32) {
    let path = dir.join("manifest");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    let end = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}

/// Version 1 named a single heads file; a checkpoint of an older version is rebuilt from
/// the log and one of a newer version is refused.
#[tokio::test]
async fn a_checkpoint_of_an_older_version_is_rebuilt_and_a_newer_one_refused() {
    let (dir, config, before) = filled_store().await;
    set_manifest_version(dir.path(), 1);
    // `annal check` says so, and finds nothing wrong.
    assert_noted(dir.path(), "checkpoint version 1");
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    assert_eq!(store.read_to_vec(ReadRequest::all()).await.unwrap(), before);
    check_filled(&store).await;
    store.close().unwrap();
    let bytes = std::fs::read(dir.path().join("manifest")).unwrap();
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    assert_eq!(version, 2, "the rebuilt checkpoint is current");

    set_manifest_version(dir.path(), 3);
    assert_refused(dir.path(), config, 3, 2);
}

/// Sets the version field of every index run in the store and returns their count.
fn set_run_versions(dir: &std::path::Path, version: u32) -> usize {
    let mut n = 0;
    for f in std::fs::read_dir(dir.join("index")).unwrap() {
        let path = f.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..44]);
        bytes[44..48].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        n += 1;
    }
    n
}

/// The version field of every index run in the store.
fn run_versions(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_dir(dir.join("index"))
        .unwrap()
        .map(|f| {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            u32::from_le_bytes(bytes[8..12].try_into().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn index_runs_of_an_older_version_are_rebuilt_from_the_log_and_a_newer_one_is_refused() {
    let (dir, config, before) = filled_store().await;
    // Version 2 runs had no correlation or actor entries.
    assert!(set_run_versions(dir.path(), 2) > 0);

    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    // The older runs were not read: every lookup answers from the rebuilt index.
    assert!(!run_versions(dir.path()).contains(&2));
    assert_eq!(store.read_to_vec(ReadRequest::all()).await.unwrap(), before);
    check_filled(&store).await;
    // A retry of an event written before is still known by its id.
    let mut retry = one("acct-0", 0);
    retry.streams[0].events[0] = NewEvent {
        id: before[0].id,
        event_type: before[0].event_type.clone(),
        schema_version: before[0].schema_version,
        content_type: before[0].content_type.clone(),
        metadata: before[0].metadata.clone(),
        data: before[0].data.clone(),
        tags: before[0].tags.clone(),
    };
    assert_eq!(store.append(retry).await.unwrap().first_position, 0);
    store.close().unwrap();
    let versions = run_versions(dir.path());
    assert!(
        !versions.is_empty() && versions.iter().all(|&v| v == 3),
        "{versions:?}"
    );

    assert!(set_run_versions(dir.path(), 4) > 0);
    assert_refused(dir.path(), config, 4, 3);
}

/// Sets the version field of every stream heads file in the store and returns their count.
fn set_heads_versions(dir: &std::path::Path, version: u32) -> usize {
    let mut n = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        let path = f.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("heads-")
        {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[8..12].copy_from_slice(&version.to_le_bytes());
            std::fs::write(&path, bytes).unwrap();
            n += 1;
        }
    }
    n
}

/// Version 1 heads files were one list read whole: `annal check` notes them, the store
/// rebuilds them from the log, and heads files of a newer version are refused.
#[tokio::test]
async fn heads_files_of_an_older_version_are_rebuilt_and_a_newer_one_refused() {
    let (dir, config, before) = filled_store().await;
    assert!(set_heads_versions(dir.path(), 1) > 0);
    assert_noted(dir.path(), "heads file of version 1");
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    assert_eq!(store.read_to_vec(ReadRequest::all()).await.unwrap(), before);
    check_filled(&store).await;
    store.close().unwrap();
    let report = annal_engine::check::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(
        report.problems.is_empty() && report.notes.is_empty(),
        "{report:?}"
    );

    assert!(set_heads_versions(dir.path(), 3) > 0);
    assert_refused(dir.path(), config, 3, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscriber_does_not_hold_back_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Subscribed, never polled while 5,000 events are written.
    let mut idle = store
        .subscribe(annal_core::SubscribeRequest::new(
            annal_core::Source::All,
            annal_core::SubscribeFrom::Start,
        ))
        .await
        .unwrap();
    for i in 0..50 {
        let events = (0..100)
            .map(|j| NewEvent::new("E", format!("{{\"n\":{}}}", i * 100 + j)))
            .collect();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.append(AppendRequest::stream("s-1", ExpectedRevision::Any, events)),
        )
        .await
        .expect("writers are not blocked by an idle subscriber")
        .unwrap();
    }
    // It still gets everything, in order, when it finally reads.
    let mut next = 0u64;
    while next < 5_000 {
        match annal_core::next_item(&mut idle).await.unwrap().unwrap() {
            annal_core::SubscriptionItem::Event(e) => {
                assert_eq!(e.position, next);
                next += 1;
            }
            other => panic!("{other:?} before the end of history"),
        }
    }
}

/// Requests in flight together reach the writer in the same or in consecutive groups, so a
/// retry of a request not yet synced, a condition on events not yet synced and an event id
/// reused while its first use is pending are all decided against the writer's pending state.
#[tokio::test]
async fn retries_conditions_and_id_reuse_against_requests_still_in_flight() {
    use annal_core::{Error, Query, QueryItem};
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
    for round in 0..20u64 {
        let head = store.head().await.unwrap();
        let tag = format!("round:{round}");
        let batch = |i: u64| {
            AppendRequest::stream(
                format!("s-{round}-{}", i % 4),
                ExpectedRevision::Any,
                (0..5)
                    .map(|j| NewEvent::new("Deposited", format!("{{\"n\":{j}}}")).with_tag(&tag))
                    .collect(),
            )
        };
        let originals: Vec<AppendRequest> = (0..12).map(batch).collect();
        let mut tasks = Vec::new();
        for r in &originals {
            // The original, then its retry, then the same ids in another stream.
            let mut moved = r.clone();
            moved.streams[0].stream_id = format!("elsewhere-{round}").into();
            for req in [r.clone(), r.clone(), moved] {
                let store = store.clone();
                tasks.push(tokio::spawn(async move { store.append(req).await }));
            }
        }
        let guarded = AppendRequest::stream(
            format!("guarded-{round}"),
            ExpectedRevision::Any,
            vec![NewEvent::new("Checked", "{}")],
        )
        .with_condition(
            Query {
                items: vec![QueryItem::tags([tag.clone()])],
            },
            head,
        );
        let guarded = {
            let store = store.clone();
            tokio::spawn(async move { store.append(guarded).await })
        };
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        for (i, three) in results.chunks(3).enumerate() {
            let first = three[0].as_ref().unwrap();
            let retry = three[1].as_ref().unwrap();
            assert_eq!(
                first, retry,
                "round {round}, request {i}: a retry gets the original result"
            );
            let Err(Error::EventIdConflict {
                stream, position, ..
            }) = &three[2]
            else {
                panic!(
                    "round {round}, request {i}: reused ids in another stream: {:?}",
                    three[2]
                );
            };
            assert_eq!(
                (stream.as_str(), *position),
                (first.streams[0].stream_id.as_str(), first.first_position)
            );
        }
        let first_tagged = results
            .iter()
            .step_by(3)
            .map(|r| r.as_ref().unwrap().first_position)
            .min()
            .unwrap();
        match guarded.await.unwrap() {
            Err(Error::ConditionFailed { position, after }) => {
                assert_eq!(after, head);
                assert_eq!(
                    position, first_tagged,
                    "round {round}: the first tagged event is named"
                );
            }
            Ok(r) => assert!(
                r.first_position < first_tagged,
                "round {round}: a condition passed although tagged events came before it"
            ),
            Err(e) => panic!("round {round}: {e}"),
        }
        let tagged = store
            .read_to_vec(ReadRequest::query(Query {
                items: vec![QueryItem::tags([tag.clone()])],
            }))
            .await
            .unwrap();
        assert_eq!(
            tagged.len(),
            12 * 5,
            "round {round}: each original once, no retry written"
        );
    }
}

/// Enough ids that the filter over the runs' event ids fills up and is built anew, twice,
/// while runs are written and merged; then every earlier request, retried, must still get
/// its original result and a reused id must still be refused, before and after reopening
/// (where the filter is built from the runs again).
#[test]
fn ids_of_every_run_are_found_after_the_id_filter_grows_and_after_reopening() {
    ids_of_every_run_are_found(annal_engine::Config::default().checkpoint_entries(3_000));
}

/// The same with an id filter bounded far below the 20,000 ids: it covers only the newest
/// runs, stays within its bound, and the runs left out answer for their own ids.
#[test]
fn ids_of_every_run_are_found_with_the_id_filter_bounded_below_them() {
    ids_of_every_run_are_found(
        annal_engine::Config::default()
            .checkpoint_entries(3_000)
            .id_filter_bytes(8 << 10),
    );
}

/// Appends 20,000 events in 400 requests, then retries some and reuses their ids, while
/// open and after reopening; the id filter stays within `config.id_filter_bytes`.
fn ids_of_every_run_are_found(config: annal_engine::Config) {
    use annal_core::{AppendResult, Error};
    let dir = tempfile::tempdir().unwrap();
    let config = || config.clone();
    let batch = |i: u64| {
        AppendRequest::stream(
            format!("s-{}", i % 7),
            ExpectedRevision::Any,
            (0..50)
                .map(|j| NewEvent::new("Deposited", format!("{{\"n\":{}}}", i * 50 + j)))
                .collect(),
        )
    };
    let requests: Vec<AppendRequest> = (0..400).map(batch).collect();
    let check = |store: &Store, results: &[AppendResult], when: &str| {
        for (i, (req, first)) in requests.iter().zip(results).enumerate().step_by(13) {
            let again = store.append_blocking(req.clone()).unwrap();
            assert_eq!(&again, first, "{when}: retry of request {i}");
            let mut reused = batch(10_000 + i as u64);
            reused.streams[0].events[17].id = req.streams[0].events[33].id;
            match store.append_blocking(reused) {
                Err(Error::EventIdConflict { position, .. }) => {
                    assert_eq!(position, first.first_position + 33, "{when}: request {i}")
                }
                other => panic!("{when}: an id of request {i} reused: {other:?}"),
            }
        }
    };
    let results: Vec<AppendResult> = {
        let store = Store::open_with(dir.path(), config()).unwrap();
        let results: Vec<AppendResult> = requests
            .iter()
            .map(|r| store.append_blocking(r.clone()).unwrap())
            .collect();
        store.checkpoint_blocking().unwrap();
        let m = store.memory();
        assert!(m.id_filter <= config().id_filter_bytes, "{m:?}");
        check(&store, &results, "while open");
        store.close().unwrap();
        results
    };
    let store = Store::open_with(dir.path(), config()).unwrap();
    check(&store, &results, "after reopening");
    // Nothing the failed requests carried was written.
    assert_eq!(
        store.head_now(),
        Some(results.last().unwrap().last_position)
    );
    let m = store.memory();
    assert!(m.id_filter <= config().id_filter_bytes, "{m:?}");
}

/// Events of no stream are found by tag after a reopen and after their indexes are rebuilt
/// from the log, move no stream head, and pass `check`.
#[tokio::test]
async fn events_of_no_stream_survive_reopening_and_a_rebuild() {
    use annal_core::{ListStreams, Query, QueryItem};
    let dir = tempfile::tempdir().unwrap();
    let claim =
        |name: &str| NewEvent::new("UsernameClaimed", "{}").with_tag(format!("user:{name}"));
    let by_tag =
        |name: &str| ReadRequest::query(Query::item(QueryItem::tags([format!("user:{name}")])));
    {
        let store = Store::open(dir.path()).unwrap();
        store.append(one("acct-1", 0)).await.unwrap();
        for name in ["ann", "bob", "cy"] {
            store
                .append(AppendRequest::no_stream(vec![
                    claim(name),
                    claim(&format!("{name}2")),
                ]))
                .await
                .unwrap();
        }
        store.close().unwrap();
    }
    let report = annal_engine::check::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.events, report.streams), (7, 1));
    let expect = |store: Store| async move {
        let bob = store.read_to_vec(by_tag("bob")).await.unwrap();
        assert_eq!(
            bob.iter()
                .map(|e| (e.stream_id.as_str(), e.revision, e.position))
                .collect::<Vec<_>>(),
            [("", 0, 3)]
        );
        let streams = store
            .list_streams(ListStreams {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(
            store.read_to_vec(ReadRequest::all()).await.unwrap().len(),
            7
        );
        store.close().unwrap();
    };
    expect(Store::open(dir.path()).unwrap()).await;
    std::fs::remove_file(dir.path().join("manifest")).unwrap();
    for f in std::fs::read_dir(dir.path().join("index")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    expect(Store::open(dir.path()).unwrap()).await;
}

/// After a reopen the heads are read from the heads files, not held: what the store holds
/// of them is their footers and a block cache that stays within its setting, whatever is
/// asked; and every head, listing and category count is still right.
#[tokio::test]
async fn stream_heads_are_read_through_a_bounded_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = annal_engine::Config::default()
        .checkpoint_entries(2000)
        .head_cache_bytes(16 << 10);
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    for chunk in 0..20 {
        let streams = (0..250)
            .map(|i| {
                annal_core::StreamAppend::new(
                    format!("c{}-{:05}", i % 4, chunk * 250 + i),
                    ExpectedRevision::NoStream,
                    vec![NewEvent::new("Opened", "{}")],
                )
            })
            .collect();
        store
            .append(AppendRequest {
                streams,
                condition: None,
            })
            .await
            .unwrap();
    }
    assert!(store.memory().heads_changed > 0, "{:?}", store.memory());
    store.close().unwrap();

    let store = Store::open_with(dir.path(), config).unwrap();
    let m = store.memory();
    assert_eq!((m.heads_changed, m.head_cache), (0, 0), "{m:?}");
    assert!(m.heads_footers > 0 && m.run_fences > 0, "{m:?}");
    for i in 0..5000u64 {
        let id = format!("c{}-{i:05}", i % 250 % 4);
        let info = store.stream_info(&id).await.unwrap().expect("present");
        assert_eq!((info.revision, info.count), (0, 1), "{id}");
        assert!(store.memory().head_cache <= 16 << 10);
    }
    assert!(store.memory().head_cache > 0);
    assert_eq!(store.stream_info("c0-99999").await.unwrap(), None);
    // Listing every stream a page at a time gives each once, in order.
    let mut listed = Vec::new();
    loop {
        let page = store
            .list_streams(annal_core::ListStreams {
                after: listed.last().cloned(),
                prefix: None,
                limit: 333,
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        listed.extend(page.into_iter().map(|s| s.stream_id));
    }
    let mut want: Vec<String> = (0..5000u64)
        .map(|i| format!("c{}-{i:05}", i % 250 % 4))
        .collect();
    want.sort();
    assert_eq!(listed, want);
    let categories = store
        .list_categories(annal_core::ListCategories::default())
        .await
        .unwrap();
    let counts: Vec<(String, u64, u64)> = categories
        .into_iter()
        .map(|c| (c.category, c.stream_count, c.event_count))
        .collect();
    let want: Vec<(String, u64, u64)> = (0..4)
        .map(|k| {
            let n = listed
                .iter()
                .filter(|s| s.starts_with(&format!("c{k}-")))
                .count() as u64;
            (format!("c{k}"), n, n)
        })
        .collect();
    assert_eq!(counts, want);
}

/// A damaged block of a heads file costs no data: the read that needs it fails naming the
/// file, other streams still answer, `annal check` names the file, and once the checkpoint
/// is dropped the store rebuilds it from the log and every head is right again.
#[tokio::test]
async fn a_damaged_heads_block_is_reported_and_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let streams = (0..2000)
        .map(|i| {
            annal_core::StreamAppend::new(
                format!("acct-{i:04}"),
                ExpectedRevision::NoStream,
                vec![NewEvent::new("Opened", "{}")],
            )
        })
        .collect::<Vec<_>>();
    for chunk in streams.chunks(500) {
        store
            .append(AppendRequest {
                streams: chunk.to_vec(),
                condition: None,
            })
            .await
            .unwrap();
    }
    store.close().unwrap();
    let heads: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("heads-")
        })
        .collect();
    assert_eq!(heads.len(), 1, "{heads:?}");
    // A byte inside the first block, in the id of a stream near its start.
    let mut bytes = std::fs::read(&heads[0]).unwrap();
    bytes[40] ^= 0x04;
    std::fs::write(&heads[0], bytes).unwrap();

    let store = Store::open(dir.path()).unwrap();
    let err = store.stream_info("acct-0001").await.unwrap_err();
    assert!(
        matches!(&err, annal_core::Error::Corruption { file, .. } if file.contains("heads-")),
        "{err:?}"
    );
    let far = store
        .stream_info("acct-1999")
        .await
        .unwrap()
        .expect("present");
    assert_eq!(far.revision, 0);
    store.close().unwrap();
    let report = annal_engine::check::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("heads-")),
        "{:?}",
        report.problems
    );

    std::fs::remove_file(dir.path().join("manifest")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in [0, 1, 1000, 1999] {
        let info = store
            .stream_info(&format!("acct-{i:04}"))
            .await
            .unwrap()
            .expect("present");
        assert_eq!((info.revision, info.first_position), (0, i));
    }
}

/// Checked with too little memory for every stream's head at once, the log is read in
/// several passes, each following a share of the streams, and the check finds what a
/// single pass finds: the same events, streams, snapshots and index entries, and no
/// problem.
#[tokio::test]
async fn a_check_in_several_passes_finds_what_one_pass_finds() {
    let (dir, config, events) = filled_store().await;
    let store = Store::open_with(dir.path(), config).unwrap();
    let mut streams: Vec<&str> = events
        .iter()
        .map(|e| e.stream_id.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    for stream in streams.iter().step_by(3) {
        let head = store.stream_info(stream).await.unwrap().unwrap();
        store
            .put_snapshot(annal_core::NewSnapshot::new(
                *stream,
                head.revision,
                1,
                b"{}".to_vec(),
            ))
            .await
            .unwrap();
    }
    store.close().unwrap();
    let one = annal_engine::check::check(dir.path(), &mut |_, _| {}).unwrap();
    let mut seen = 0;
    // A million streams are assumed beyond those of the checkpoint: 300 MB of heads.
    let many = annal_engine::check::check_with(dir.path(), 45_000_000, &mut |done, total| {
        assert!(done <= total);
        seen = seen.max(done);
    })
    .unwrap();
    assert_eq!((one.passes, many.passes), (1, 7));
    assert!(one.problems.is_empty(), "{:?}", one.problems);
    assert!(many.problems.is_empty(), "{:?}", many.problems);
    assert_eq!(
        (
            many.events,
            many.streams,
            many.snapshots,
            many.index_entries
        ),
        (one.events, one.streams, one.snapshots, one.index_entries)
    );
    assert_eq!(many.streams, streams.len() as u64);
    assert!(many.snapshots > 0);
    assert_eq!(many.notes, one.notes);
}
