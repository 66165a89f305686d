//! A panic in any engine thread poisons the store with its cause, as a failed fsync does:
//! writes are refused with `Poisoned`, reads are still served, and no reader sees a group
//! that was not applied whole. The panic is injected through the simulated file system:
//! the named thread's next write or sync panics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use annal_core::{
    AppendRequest, AppendResult, Error, EventStore, ExpectedRevision, NewEvent, ReadRequest,
};
use annal_engine::io::sim::SimFs;
use annal_engine::{Config, Store};

fn config(fs: &SimFs) -> Config {
    Config::default()
        .fs(Arc::new(fs.clone()))
        .segment_size(4096)
        .checkpoint_entries(40)
        .preallocate(64 << 10)
}

fn append(store: &Store, i: u64) -> annal_core::Result<AppendResult> {
    store.append_blocking(AppendRequest::stream(
        format!("acct-{}", i % 5),
        ExpectedRevision::Any,
        vec![NewEvent::new("Deposited", format!("{{\"i\":{i}}}")).with_tag("t:1")],
    ))
}

/// What a reader may see at any moment: a gapless log, and stream heads whose every event
/// is readable and is the revision the head names.
fn check_consistent(store: &Store, rt: &tokio::runtime::Runtime) {
    let events: Vec<_> = store
        .read_iter(ReadRequest::all())
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64, "the log has a gap");
    }
    for k in 0..5 {
        let stream = format!("acct-{k}");
        let Some(info) = rt.block_on(store.stream_info(&stream)).unwrap() else {
            continue;
        };
        let head = store
            .head_now()
            .expect("a stream exists, so the log has events");
        assert!(
            info.last_position <= head,
            "stream_info names position {} beyond the head {head}",
            info.last_position
        );
        let last = store
            .read_iter(ReadRequest::stream(&stream).backward().limit(1))
            .unwrap()
            .next()
            .expect("the stream has an event")
            .unwrap();
        assert!(last.revision >= info.revision, "{last:?} {info:?}");
    }
}

/// Makes the thread `annal-<name>` panic while appends go on and readers check what they
/// see, then checks the poisoned store and that reopening recovers it.
fn a_panic_poisons_the_store(name: &str) {
    let fs = SimFs::new();
    let store = Arc::new(Store::open_with("/db", config(&fs)).unwrap());
    let mut acked: Vec<u64> = (0..20)
        .map(|i| append(&store, i).unwrap().first_position)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut checks = 0;
            while !stop.load(Ordering::Acquire) || checks == 0 {
                check_consistent(&store, &rt);
                checks += 1;
            }
        }
    });
    fs.panic_in_thread(&format!("annal-{name}"));
    let mut refused = None;
    for i in 20..20_000 {
        match append(&store, i) {
            Ok(r) => acked.push(r.first_position),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    stop.store(true, Ordering::Release);
    reader.join().expect("every reader saw a consistent store");
    assert!(
        !fs.panic_pending(),
        "the {name} thread never wrote or synced"
    );
    let refused = refused.expect("a write was refused after the panic");
    let cause = store.poison_cause().expect("the store is poisoned");
    assert!(
        cause.contains(&format!("the {name} thread panicked: injected panic")),
        "{cause}"
    );
    let Error::Poisoned { cause: said } = refused else {
        panic!("refused with {refused:?}")
    };
    assert!(said.contains("panicked"), "{said}");
    // Every later write is refused with the cause; reads are still served, and give exactly
    // the acknowledged events.
    let later = append(&store, 1_000_000).unwrap_err();
    assert_eq!(
        later,
        Error::Poisoned {
            cause: cause.clone()
        }
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    check_consistent(&store, &rt);
    let seen: Vec<u64> = store
        .read_iter(ReadRequest::all())
        .unwrap()
        .map(|e| e.unwrap().position)
        .collect();
    assert_eq!(seen, acked);
    // Closing a poisoned store joins its threads; reopening it recovers every acknowledged
    // event and takes writes again.
    Arc::into_inner(store)
        .expect("the reader let go of the store")
        .close()
        .unwrap();
    let store = Store::open_with("/db", config(&fs)).unwrap();
    assert!(store.poison_cause().is_none());
    let recovered: Vec<u64> = store
        .read_iter(ReadRequest::all())
        .unwrap()
        .map(|e| e.unwrap().position)
        .take(acked.len())
        .collect();
    assert_eq!(recovered, acked);
    append(&store, 2_000_000).unwrap();
}

#[test]
fn a_panic_in_the_writer_poisons_the_store() {
    a_panic_poisons_the_store("writer");
}

#[test]
fn a_panic_in_the_syncer_poisons_the_store() {
    a_panic_poisons_the_store("syncer");
}

#[test]
fn a_panic_in_the_checkpoint_thread_poisons_the_store() {
    a_panic_poisons_the_store("checkpoint");
}

#[test]
fn a_panic_in_the_preallocation_thread_poisons_the_store() {
    a_panic_poisons_the_store("prealloc");
}
