//! Snapshots kept by the store, on the bank account, each check on the embedded engine and
//! through a client of a server: taken by policy (every N events, or after a long replay),
//! loads that start from the latest usable one, snapshots of another schema version or that
//! do not decode passed over, time travel from an earlier snapshot, and a store that refuses
//! snapshots costing commands nothing.

mod common;

use annal_core::testkit::MemoryStore;
use annal_core::{EventStore, EventStoreExt, NewSnapshot, ReadRequest};
use annal_cqrs::{decode_recorded, At, CommandHandler, Context, Decider, Snapshotting, Upcasters};
use common::{
    Account, AccountCommand as C, AccountEvent, AccountSnapshots, BankAccount, Refused, Snapped,
};

/// A snapshot policy: every `EVERY` events, after replaying more than `AFTER` (0: never),
/// at schema version `VERSION`.
struct Policy<const EVERY: u64, const AFTER: u64, const VERSION: u32>;

impl<const EVERY: u64, const AFTER: u64, const VERSION: u32> AccountSnapshots
    for Policy<EVERY, AFTER, VERSION>
{
    fn snapshots() -> Option<Snapshotting<Account>> {
        let mut how = Snapshotting::json(VERSION);
        if EVERY > 0 {
            how = how.every(EVERY);
        }
        if AFTER > 0 {
            how = how.after_replaying(AFTER);
        }
        Some(how)
    }
}

type Every5 = Snapped<Policy<5, 0, 1>>;

both_ways!(
    a_command_past_every_n_events_keeps_a_snapshot_and_loads_start_there,
    a_long_replay_keeps_a_snapshot,
    snapshots_of_another_version_or_that_do_not_decode_are_passed_over,
    time_travel_starts_from_an_earlier_snapshot,
);

/// The state folded from the stream's first `n` events, without snapshots.
async fn folded<S: EventStore>(store: &S, n: usize) -> Account {
    let events = store
        .read_to_vec(ReadRequest::stream("account-1"))
        .await
        .unwrap();
    let mut state = Account::default();
    for e in events.iter().take(n) {
        for event in decode_recorded::<AccountEvent>(e, &Upcasters::new()).unwrap() {
            state = BankAccount::evolve(state, &event);
        }
    }
    state
}

/// Opens account 1 and deposits 1 `deposits` times through `D`: revisions 0 to `deposits`.
async fn opened_with<D: Decider<Command = C, Error = Refused>, S: EventStore>(
    h: &CommandHandler<S>,
    deposits: usize,
) {
    let ctx = Context::new();
    h.handle::<D>(
        "1",
        &C::Open {
            owner: "ann".into(),
        },
        &ctx,
    )
    .await
    .unwrap();
    for _ in 0..deposits {
        h.handle::<D>("1", &C::Deposit { amount: 1 }, &ctx)
            .await
            .unwrap();
    }
}

/// Opens account 1 and deposits 1 eleven times through `D`: revisions 0 to 11.
async fn twelve_events<D: Decider<Command = C, Error = Refused>, S: EventStore>(
    h: &CommandHandler<S>,
) {
    opened_with::<D, S>(h, 11).await;
}

async fn a_command_past_every_n_events_keeps_a_snapshot_and_loads_start_there<
    S: EventStore + Clone + 'static,
>(
    store: S,
) {
    let h = CommandHandler::new(store.clone());
    twelve_events::<Every5, S>(&h).await;
    // Snapshots when the stream passed 5 and 10 events: at revisions 4 and 9.
    let kept = store
        .get_snapshot("account-1", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((kept.revision, kept.schema_version), (9, 1));
    let earlier = store
        .get_snapshot("account-1", Some(8))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(earlier.revision, 4);
    assert_eq!(
        store.get_snapshot("account-1", Some(3)).await.unwrap(),
        None
    );

    let loaded = h.load::<Every5>("1").await.unwrap();
    assert_eq!(
        (loaded.snapshot, loaded.replayed, loaded.revision),
        (Some(9), 2, Some(11))
    );
    assert_eq!(loaded.state, folded(&store, 12).await);
    assert_eq!(loaded.state.balance, 11);
    // The same state folded from the start (at another schema version, no snapshot fits).
    let replayed = h.load::<Snapped<Policy<0, 0, 2>>>("1").await.unwrap();
    assert_eq!((replayed.snapshot, replayed.replayed), (None, 12));
    assert_eq!(replayed.state, loaded.state);
    // Commands go on from the snapshot's state.
    let r = h
        .handle::<Every5>("1", &C::Withdraw { amount: 11 }, &Context::new())
        .await
        .unwrap();
    assert_eq!(r.revision, Some(12));
    assert_eq!(h.load::<Every5>("1").await.unwrap().state.balance, 0);
}

async fn a_long_replay_keeps_a_snapshot<S: EventStore + Clone + 'static>(store: S) {
    let h = CommandHandler::new(store.clone());
    twelve_events::<BankAccount, S>(&h).await;
    assert_eq!(store.get_snapshot("account-1", None).await.unwrap(), None);
    type After3 = Snapped<Policy<0, 3, 1>>;
    let first = h.load::<After3>("1").await.unwrap();
    assert_eq!((first.snapshot, first.replayed), (None, 12));
    let kept = store
        .get_snapshot("account-1", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.revision, 11);
    let second = h.load::<After3>("1").await.unwrap();
    assert_eq!(
        (
            second.snapshot,
            second.replayed,
            second.revision,
            second.position
        ),
        (Some(11), 0, Some(11), None)
    );
    assert_eq!(second.state, first.state);
}

async fn snapshots_of_another_version_or_that_do_not_decode_are_passed_over<
    S: EventStore + Clone + 'static,
>(
    store: S,
) {
    let h = CommandHandler::new(store.clone());
    twelve_events::<Every5, S>(&h).await;
    let full = folded(&store, 12).await;
    // Version 2 of the state's encoding: the version 1 snapshots are passed over.
    let v2 = h.load::<Snapped<Policy<0, 0, 2>>>("1").await.unwrap();
    assert_eq!((v2.snapshot, v2.replayed), (None, 12));
    assert_eq!(v2.state, full);
    // The latest snapshot does not decode: the one before it is used.
    store
        .put_snapshot(NewSnapshot::new(
            "account-1",
            11,
            1,
            b"{\"balance\":".to_vec(),
        ))
        .await
        .unwrap();
    let loaded = h.load::<Every5>("1").await.unwrap();
    assert_eq!((loaded.snapshot, loaded.replayed), (Some(9), 2));
    assert_eq!(loaded.state, full);
}

async fn time_travel_starts_from_an_earlier_snapshot<S: EventStore + Clone + 'static>(store: S) {
    let h = CommandHandler::new(store.clone());
    twelve_events::<Every5, S>(&h).await;
    let events = store
        .read_to_vec(ReadRequest::stream("account-1"))
        .await
        .unwrap();
    for r in 0..12u64 {
        let want = folded(&store, r as usize + 1).await;
        let snapshot = match r {
            0..=3 => None,
            4..=8 => Some(4),
            _ => Some(9),
        };
        for at in [
            At::Revision(r),
            At::Position(events[r as usize].position),
            At::Time(events[r as usize].recorded_at),
        ] {
            let loaded = h.load_as_of::<Every5>("1", at).await.unwrap();
            assert_eq!(loaded.state, want, "{at:?}");
            assert_eq!(loaded.revision, Some(r), "{at:?}");
            assert_eq!(loaded.snapshot, snapshot, "{at:?}");
            assert_eq!(
                loaded.replayed,
                r + 1 - snapshot.map_or(0, |s| s + 1),
                "{at:?}"
            );
        }
    }
    let before = h
        .load_as_of::<Every5>("1", At::Time(annal_core::Timestamp(0)))
        .await
        .unwrap();
    assert_eq!((before.revision, before.snapshot), (None, None));
}

/// Snapshots too large for the store to keep.
struct Bloated;

impl AccountSnapshots for Bloated {
    fn snapshots() -> Option<Snapshotting<Account>> {
        let encode = |s: &Account| {
            let mut json = serde_json::to_vec(s).map_err(|e| e.to_string())?;
            json.resize(4096, b' ');
            Ok(json)
        };
        let decode = |b: &[u8]| serde_json::from_slice(b).map_err(|e| e.to_string());
        Some(
            Snapshotting::with_codec(1, encode, decode)
                .every(2)
                .after_replaying(1),
        )
    }
}

#[tokio::test]
async fn a_store_that_refuses_snapshots_costs_commands_nothing() {
    let store = MemoryStore::new().with_max_event_size(1024);
    let h = CommandHandler::new(store.clone());
    twelve_events::<Snapped<Bloated>, MemoryStore>(&h).await;
    let loaded = h.load::<Snapped<Bloated>>("1").await.unwrap();
    assert_eq!((loaded.snapshot, loaded.replayed), (None, 12));
    assert_eq!(loaded.state.balance, 11);
    assert_eq!(store.get_snapshot("account-1", None).await.unwrap(), None);
}

/// A stream shorter than the policy's threshold is loaded from its events alone: its load
/// never asks for a snapshot (a snapshot put by hand at revision 1 goes unused).
#[tokio::test]
async fn a_stream_shorter_than_the_policy_threshold_is_loaded_without_asking_for_a_snapshot() {
    let store = MemoryStore::new();
    let h = CommandHandler::new(store.clone());
    let ctx = Context::new();
    opened_with::<Every5, MemoryStore>(&h, 3).await;
    let state = serde_json::to_vec(&folded(&store, 2).await).unwrap();
    store
        .put_snapshot(NewSnapshot::new("account-1", 1, 1, state))
        .await
        .unwrap();
    let loaded = h.load::<Every5>("1").await.unwrap();
    assert_eq!((loaded.snapshot, loaded.replayed), (None, 4));
    assert_eq!(loaded.state.balance, 3);
    // Two events more: the fifth took a snapshot at revision 4, and a load that read five
    // events asks for it, but starts from a snapshot only past what it read.
    for _ in 0..2 {
        h.handle::<Every5>("1", &C::Deposit { amount: 1 }, &ctx)
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .get_snapshot("account-1", None)
            .await
            .unwrap()
            .unwrap()
            .revision,
        4
    );
    let loaded = h.load::<Every5>("1").await.unwrap();
    assert_eq!((loaded.snapshot, loaded.replayed), (None, 6));
    assert_eq!(loaded.state.balance, 5);
}
