//! Properties of the toolkit over random histories, on the in-memory reference store:
//! handlers under random conflicts (also one handler that keeps the states its commands
//! leave) never lose nor double a decision, loading as of any revision equals folding that
//! prefix of the stream, and with snapshots at random points (over events some of which
//! are upcast) every load equals the full replay.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use annal_core::testkit::MemoryStore;
use annal_core::{
    AppendRequest, EventStore, EventStoreExt, ExpectedRevision, NewEvent, NewSnapshot, ReadRequest,
};
use annal_cqrs::{
    decode_recorded, At, CommandError, CommandHandler, Context, Decider, Retry, Snapshotting,
    Upcast, Upcasters,
};
use common::{
    Account, AccountCommand as C, AccountEvent, AccountSnapshots, BankAccount, Racing, Snapped,
};
use proptest::prelude::*;

const ATTEMPTS: u32 = 3;

fn command() -> impl Strategy<Value = C> {
    prop_oneof![
        1 => Just(C::Open { owner: "ann".into() }),
        4 => (1u64..50).prop_map(|amount| C::Deposit { amount }),
        3 => (1u64..80).prop_map(|amount| C::Withdraw { amount }),
        1 => Just(C::Close),
    ]
}

/// JSON snapshots of version 1, used but never taken.
struct V1;

impl AccountSnapshots for V1 {
    fn snapshots() -> Option<Snapshotting<Account>> {
        Some(Snapshotting::json(1))
    }
}

type FromSnapshots = Snapped<V1>;

/// Deposits as the first version stored them: `MoneyIn` in cents.
fn upcasters() -> Upcasters {
    Upcasters::new().on("MoneyIn", 1, |data| {
        let cents = data["cents"].as_u64().ok_or("no cents")?;
        Ok(vec![Upcast::new(
            "Deposited",
            1,
            serde_json::json!({ "amount": cents / 100 }),
        )])
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Each command runs while another writer gets in first `races` times (a withdrawal of
    /// 1, or a deposit of 1). A command that succeeded has its events in the log exactly
    /// once, at the revision it returned; one that failed has none; contention is reported
    /// exactly when every attempt was raced; and the state loaded at the end is the fold of
    /// the whole log.
    ///
    /// With `kept`, one handler takes every command and keeps the states they leave
    /// (`with_state_cache`): a kept state is decided on until a race makes it stale.
    #[test]
    fn handlers_under_random_conflicts_lose_and_double_nothing(
        ops in prop::collection::vec((command(), 0u32..5, any::<bool>()), 1..25),
        kept in any::<bool>(),
    ) {
        runtime().block_on(async {
            let store = MemoryStore::new();
            let retry = Retry { attempts: ATTEMPTS, first_pause: Duration::ZERO, max_pause: Duration::ZERO };
            let racing = Racing::new(store.clone(), 0, AccountEvent::Deposited { amount: 1 });
            let cached = CommandHandler::new(racing.clone()).with_retry(retry).with_state_cache(4);
            for (c, races, deposit) in ops {
                let other = if deposit {
                    AccountEvent::Deposited { amount: 1 }
                } else {
                    AccountEvent::Withdrawn { amount: 1 }
                };
                racing.again(races, other);
                let h = if kept {
                    cached.clone()
                } else {
                    CommandHandler::new(racing.clone()).with_retry(retry)
                };
                let ctx = Context::new();
                let r = h.handle::<BankAccount>("1", &c, &ctx).await;
                let mine: Vec<_> = store
                    .read_to_vec(ReadRequest::stream("account-1"))
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.metadata.correlation_id == Some(ctx.correlation_id))
                    .collect();
                let appends = racing.appends.load(Ordering::SeqCst);
                match r {
                    Ok(done) if done.written > 0 => {
                        prop_assert_eq!(mine.len(), done.written);
                        prop_assert_eq!(mine.last().map(|e| e.revision), done.revision);
                        prop_assert_eq!(done.attempts, appends);
                        prop_assert_eq!(appends, races + 1);
                    }
                    Ok(_) | Err(CommandError::Rejected(_)) => prop_assert!(mine.is_empty()),
                    Err(CommandError::Contended { attempts, .. }) => {
                        prop_assert!(mine.is_empty());
                        prop_assert_eq!(attempts, ATTEMPTS);
                        prop_assert!(races >= ATTEMPTS);
                    }
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                }
            }
            let all = store.read_to_vec(ReadRequest::stream("account-1")).await.unwrap();
            let mut folded = Account::default();
            for e in &all {
                for event in decode_recorded::<AccountEvent>(e, &Upcasters::new()).unwrap() {
                    folded = BankAccount::evolve(folded, &event);
                }
            }
            let loaded = CommandHandler::new(store.clone()).load::<BankAccount>("1").await.unwrap();
            prop_assert_eq!(loaded.state, folded);
            Ok(())
        })?;
    }

    /// Loading as of every revision equals folding the stream up to it.
    #[test]
    fn loading_as_of_a_revision_folds_that_prefix(
        ops in prop::collection::vec(command(), 1..30)
    ) {
        runtime().block_on(async {
            let store = MemoryStore::new();
            let h = CommandHandler::new(store.clone());
            h.handle::<BankAccount>("1", &C::Open { owner: "ann".into() }, &Context::new())
                .await
                .unwrap();
            for c in &ops {
                let _ = h.handle::<BankAccount>("1", c, &Context::new()).await;
            }
            let all = store.read_to_vec(ReadRequest::stream("account-1")).await.unwrap();
            let mut folded = Account::default();
            for (rev, e) in all.iter().enumerate() {
                for event in decode_recorded::<AccountEvent>(e, &Upcasters::new()).unwrap() {
                    folded = BankAccount::evolve(folded, &event);
                }
                let at = h.load_as_of::<BankAccount>("1", At::Revision(rev as u64)).await.unwrap();
                prop_assert_eq!(&at.state, &folded);
                let at = h.load_as_of::<BankAccount>("1", At::Position(e.position)).await.unwrap();
                prop_assert_eq!(&at.state, &folded);
            }
            Ok(())
        })?;
    }

    /// Over a random history (deposits stored now as today's events, now as version 1
    /// `MoneyIn` events that an upcaster brings up to date) with snapshots at random
    /// revisions: the latest snapshot and the events after it give the state a full replay
    /// folds, loading as of the head gives it too, and loading as of any revision gives the
    /// fold of that prefix, whichever snapshot it starts from. A snapshot holds state after
    /// upcasting, so upcasting and snapshots commute.
    #[test]
    fn snapshots_at_random_points_load_what_a_full_replay_folds(
        ops in prop::collection::vec((command(), any::<bool>()), 1..30),
        points in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        runtime().block_on(async {
            let store = MemoryStore::new();
            let h = CommandHandler::new(store.clone()).with_upcasters(upcasters());
            let ctx = Context::new();
            h.handle::<BankAccount>("1", &C::Open { owner: "ann".into() }, &ctx).await.unwrap();
            for (c, old) in ops {
                match c {
                    C::Deposit { amount } if old => {
                        let cents = format!("{{\"cents\":{}}}", amount * 100);
                        store
                            .append(AppendRequest::stream(
                                "account-1",
                                ExpectedRevision::Any,
                                vec![NewEvent::new("MoneyIn", cents)],
                            ))
                            .await
                            .unwrap();
                    }
                    c => {
                        let _ = h.handle::<BankAccount>("1", &c, &ctx).await;
                    }
                }
            }
            let all = store.read_to_vec(ReadRequest::stream("account-1")).await.unwrap();
            let mut prefixes = Vec::with_capacity(all.len());
            let mut state = Account::default();
            for e in &all {
                for event in decode_recorded::<AccountEvent>(e, &upcasters()).unwrap() {
                    state = BankAccount::evolve(state, &event);
                }
                prefixes.push(state.clone());
            }
            let mut snapshots: Vec<u64> = points.iter().map(|p| p.index(all.len()) as u64).collect();
            snapshots.sort_unstable();
            snapshots.dedup();
            for &r in &snapshots {
                let data = serde_json::to_vec(&prefixes[r as usize]).unwrap();
                store.put_snapshot(NewSnapshot::new("account-1", r, 1, data)).await.unwrap();
            }
            let last = all.len() as u64 - 1;
            let loaded = h.load::<FromSnapshots>("1").await.unwrap();
            prop_assert_eq!(&loaded.state, &prefixes[last as usize]);
            prop_assert_eq!(loaded.snapshot, snapshots.last().copied());
            let replayed = match snapshots.last() {
                Some(s) => last - s,
                None => last + 1,
            };
            prop_assert_eq!(loaded.replayed, replayed);
            prop_assert_eq!(&h.load::<BankAccount>("1").await.unwrap().state, &loaded.state);
            let head = all[last as usize].position;
            let at_head = h.load_as_of::<FromSnapshots>("1", At::Position(head)).await.unwrap();
            prop_assert_eq!(&at_head.state, &loaded.state);
            for r in 0..=last {
                let at = h.load_as_of::<FromSnapshots>("1", At::Revision(r)).await.unwrap();
                prop_assert_eq!(&at.state, &prefixes[r as usize]);
                prop_assert_eq!(at.revision, Some(r));
                let from = snapshots.iter().rev().find(|&&s| s <= r).copied();
                prop_assert_eq!(at.snapshot, from);
            }
            Ok(())
        })?;
    }
}
