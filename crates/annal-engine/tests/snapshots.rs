//! Snapshots in the engine: kept across reopening, compacted so that deleted data leaves the
//! disk, absent from a store that never took one, verified by `check`, and poisoning the
//! store when their thread fails.

use std::path::Path;
use std::sync::Arc;

use annal_core::{AppendRequest, Error, ExpectedRevision, NewEvent, NewSnapshot};
use annal_engine::io::sim::SimFs;
use annal_engine::{check, Config, Store};

fn events(store: &Store, stream: &str, n: usize) {
    let events = (0..n)
        .map(|i| NewEvent::new("Counted", format!("{{\"i\":{i}}}")))
        .collect();
    store
        .append_blocking(AppendRequest::stream(stream, ExpectedRevision::Any, events))
        .unwrap();
}

fn put(store: &Store, stream: &str, revision: u64, data: &str) {
    store
        .put_snapshot_blocking(NewSnapshot::new(
            stream,
            revision,
            1,
            data.as_bytes().to_vec(),
        ))
        .unwrap();
}

fn data(store: &Store, stream: &str, at_or_before: Option<u64>) -> Option<String> {
    store
        .get_snapshot_now(stream, at_or_before)
        .unwrap()
        .map(|s| String::from_utf8(s.data.to_vec()).unwrap())
}

fn snapshot_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join("snapshots")) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn a_store_without_snapshots_has_no_snapshot_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    events(&store, "a-1", 3);
    assert_eq!(store.delete_snapshots_blocking("a-1").unwrap(), 0);
    store.close().unwrap();
    assert!(!dir.path().join("snapshots").exists());
    let report = check::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.snapshots, 0);
}

#[test]
fn snapshots_and_deletes_survive_reopening_and_compaction_drops_deleted_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::default().snapshot_compact_after(4096);
    let store = Store::open_with(dir.path(), config()).unwrap();
    events(&store, "kept-1", 20);
    events(&store, "gone-1", 20);
    let secret = "personal-data-".repeat(40);
    for r in 0..20 {
        put(&store, "kept-1", r, &format!("kept at {r}"));
        put(&store, "gone-1", r, &format!("{secret}{r}"));
    }
    store.close().unwrap();

    let store = Store::open_with(dir.path(), config()).unwrap();
    assert_eq!(data(&store, "kept-1", None).as_deref(), Some("kept at 19"));
    assert_eq!(
        data(&store, "kept-1", Some(12)).as_deref(),
        Some("kept at 12")
    );
    assert_eq!(
        data(&store, "kept-1", Some(11)),
        None,
        "eight kept: 12 to 19"
    );
    assert_eq!(data(&store, "gone-1", None), Some(format!("{secret}19")));
    assert_eq!(store.delete_snapshots_blocking("gone-1").unwrap(), 8);
    assert_eq!(data(&store, "gone-1", None), None);
    store.close().unwrap();

    // The dead records outweighed the live ones: the file was rewritten without them.
    let files = snapshot_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "deleted snapshot data is still on disk"
    );
    let store = Store::open_with(dir.path(), config()).unwrap();
    assert_eq!(
        data(&store, "gone-1", None),
        None,
        "a delete survives reopening"
    );
    assert_eq!(data(&store, "kept-1", None).as_deref(), Some("kept at 19"));
    assert_eq!(
        data(&store, "kept-1", Some(15)).as_deref(),
        Some("kept at 15")
    );
    store.close().unwrap();
    let report = check::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.snapshots, 8);
}

#[test]
fn a_snapshot_larger_than_an_event_may_be_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), Config::default().max_event_size(1024)).unwrap();
    events(&store, "big-1", 1);
    let err = store
        .put_snapshot_blocking(NewSnapshot::new("big-1", 0, 1, vec![b'x'; 1025]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 1025,
                limit: 1024,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("big-1"), "{err}");
    assert_eq!(data(&store, "big-1", None), None);
}

#[test]
fn check_reports_a_torn_snapshot_record_and_a_snapshot_beyond_its_stream() {
    let long = tempfile::tempdir().unwrap();
    let store = Store::open(long.path()).unwrap();
    events(&store, "s-1", 5);
    put(&store, "s-1", 4, "at four");
    store.close().unwrap();
    let file = snapshot_files(long.path()).remove(0);

    // The same snapshot file beside a log whose stream ends at revision 1.
    let short = tempfile::tempdir().unwrap();
    let store = Store::open(short.path()).unwrap();
    events(&store, "s-1", 2);
    store.close().unwrap();
    std::fs::create_dir_all(short.path().join("snapshots")).unwrap();
    std::fs::copy(
        &file,
        short
            .path()
            .join("snapshots")
            .join(file.file_name().unwrap()),
    )
    .unwrap();
    let report = check::check(short.path(), &mut |_, _| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0]
            .contains("stream 's-1' at revision 4, but the stream ends at revision 1"),
        "{}",
        report.problems[0]
    );

    // A record cut short at the end is a torn write: a note, cut on the next open.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
    let report = check::check(long.path(), &mut |_, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.snapshots, 0);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("cut off on the next open")),
        "{:?}",
        report.notes
    );
    let store = Store::open(long.path()).unwrap();
    assert_eq!(data(&store, "s-1", None), None, "the torn snapshot is gone");
    put(&store, "s-1", 3, "at three");
    assert_eq!(data(&store, "s-1", None).as_deref(), Some("at three"));
    store.close().unwrap();
    let report = check::check(long.path(), &mut |_, _| {}).unwrap();
    assert!(report.is_ok() && report.notes.is_empty(), "{report:?}");
    assert_eq!(report.snapshots, 1);
}

#[test]
fn a_panic_in_the_snapshot_thread_poisons_the_store() {
    let fs = SimFs::new();
    let config = || Config::default().fs(Arc::new(fs.clone()));
    let store = Store::open_with("/db", config()).unwrap();
    events(&store, "p-1", 3);
    put(&store, "p-1", 1, "before");
    fs.panic_in_thread("annal-snapshots");
    let err = store
        .put_snapshot_blocking(NewSnapshot::new("p-1", 2, 1, b"after".to_vec()))
        .unwrap_err();
    let Error::Poisoned { cause } = err else {
        panic!("refused with {err:?}")
    };
    assert!(cause.contains("the snapshots thread panicked"), "{cause}");
    // Writes are refused, reads go on.
    let append = store.append_blocking(AppendRequest::stream(
        "p-1",
        ExpectedRevision::Any,
        vec![NewEvent::new("Counted", b"{}".to_vec())],
    ));
    assert!(matches!(append, Err(Error::Poisoned { .. })), "{append:?}");
    assert!(matches!(
        store.delete_snapshots_blocking("p-1"),
        Err(Error::Poisoned { .. })
    ));
    assert_eq!(data(&store, "p-1", None).as_deref(), Some("before"));
    store.close().unwrap();
    let store = Store::open_with("/db", config()).unwrap();
    assert_eq!(data(&store, "p-1", None).as_deref(), Some("before"));
    put(&store, "p-1", 2, "after");
    assert_eq!(data(&store, "p-1", None).as_deref(), Some("after"));
}

#[test]
fn damage_before_acknowledged_snapshots_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    events(&store, "d-1", 3);
    put(&store, "d-1", 0, "first-group-data");
    put(&store, "d-1", 1, "second-group-data");
    put(&store, "d-1", 2, "third-group-data");
    store.close().unwrap();
    let file = snapshot_files(dir.path()).remove(0);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(16)
        .position(|w| w == b"first-group-data")
        .unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    // The damaged group is followed by acknowledged ones: not a torn write.
    let err = Store::open(dir.path()).err().expect("the open is refused");
    assert!(
        matches!(&err, Error::Corruption { file: f, .. } if f.ends_with(".snapshots")),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("acknowledged groups after it"),
        "{err}"
    );
    let report = check::check(dir.path(), &mut |_, _| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("damaged group"),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_snapshot_file_of_an_older_format_is_dropped_and_snapshots_start_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    events(&store, "o-1", 2);
    put(&store, "o-1", 1, "current");
    store.close().unwrap();
    let file = snapshot_files(dir.path()).remove(0);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let report = check::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("older than this build's")),
        "{:?}",
        report.notes
    );
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        data(&store, "o-1", None),
        None,
        "its snapshots were dropped"
    );
    put(&store, "o-1", 0, "again");
    assert_eq!(data(&store, "o-1", None).as_deref(), Some("again"));
    store.close().unwrap();
    assert_eq!(snapshot_files(dir.path()).len(), 1);
}

/// A compaction the disk has no room for leaves the old file in force: the store keeps
/// taking appends and snapshots, and every snapshot stays readable.
#[test]
fn a_compaction_that_fails_for_want_of_space_costs_nothing_but_the_compaction() {
    let fs = SimFs::new();
    let config = || {
        Config::default()
            .fs(Arc::new(fs.clone()))
            .snapshot_compact_after(1)
            .preallocate(0)
    };
    let store = Store::open_with("/db", config()).unwrap();
    events(&store, "c-1", 2);
    events(&store, "c-2", 2);
    put(&store, "c-1", 1, &"x".repeat(4000));
    // Room for the group that replaces it (4,050 bytes), not for the compaction it makes
    // due (a file of 4,058 bytes).
    fs.set_space_left(Some(4150));
    let big = "y".repeat(4000);
    put(&store, "c-1", 1, &big);
    // The keeper tries the compaction after answering, before it takes the next request:
    // a small put (it fits) is answered once the attempt is over.
    put(&store, "c-2", 0, "s");
    assert!(store.poison_cause().is_none(), "{:?}", store.poison_cause());
    assert_eq!(data(&store, "c-1", None), Some(big.clone()));
    let files = annal_engine::io::Fs::list(&fs, Path::new("/db/snapshots")).unwrap();
    assert_eq!(
        files,
        ["0000000000000001.snapshots"],
        "the old file stays in force"
    );
    fs.set_space_left(None);
    events(&store, "c-1", 1);
    put(&store, "c-2", 1, "after");
    assert_eq!(data(&store, "c-2", None).as_deref(), Some("after"));
    // Tried again once the dead bytes have doubled: the new file takes over.
    put(&store, "c-1", 1, &big);
    put(&store, "c-1", 1, &big);
    put(&store, "c-2", 0, "s");
    let files = annal_engine::io::Fs::list(&fs, Path::new("/db/snapshots")).unwrap();
    assert_eq!(
        files,
        ["0000000000000002.snapshots"],
        "compacted on the retry"
    );
    drop(store);
    let files = annal_engine::io::Fs::list(&fs, Path::new("/db/snapshots")).unwrap();
    assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");
    let store = Store::open_with("/db", config()).unwrap();
    assert_eq!(data(&store, "c-1", None), Some(big));
    assert_eq!(data(&store, "c-2", None).as_deref(), Some("after"));
}
