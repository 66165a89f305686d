//! Command handling on the bank account, each check on the embedded engine and through a
//! client of a server: what a command writes, what a refusal or an empty decision leaves,
//! conflicts decided again on the new state, bounded attempts, unanswered appends sent
//! again, and the metadata every event carries.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annal_core::{Error, EventStore, EventStoreExt, ReadRequest};
use annal_cqrs::{CommandError, CommandHandler, Context, Retry};
use common::{AccountCommand as C, AccountEvent, BankAccount, Dropping, Racing, Refused};

fn open(owner: &str) -> C {
    C::Open {
        owner: owner.into(),
    }
}

both_ways!(
    a_command_appends_what_it_decides,
    a_refused_command_writes_nothing,
    a_decision_of_no_events_writes_nothing,
    a_conflict_is_decided_again_on_the_new_state,
    attempts_are_bounded,
    an_unanswered_append_is_sent_again_and_lands_once,
    concurrent_handlers_lose_no_decision,
    concurrent_handlers_sharing_kept_states_lose_no_decision,
    a_kept_state_decides_the_next_command_and_is_checked_when_stale,
    events_carry_the_context,
    a_reaction_joins_the_transaction_of_its_cause,
);

async fn a_command_appends_what_it_decides<S: EventStore + Clone + 'static>(store: S) {
    let h = CommandHandler::new(store.clone());
    let ctx = Context::new();
    let opened = h
        .handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    assert_eq!(
        (opened.stream_id.as_str(), opened.revision, opened.written),
        ("account-1", Some(0), 1)
    );
    let deposited = h
        .handle::<BankAccount>("1", &C::Deposit { amount: 100 }, &ctx)
        .await
        .unwrap();
    let withdrawn = h
        .handle::<BankAccount>("1", &C::Withdraw { amount: 30 }, &ctx)
        .await
        .unwrap();
    assert_eq!((deposited.revision, withdrawn.revision), (Some(1), Some(2)));
    assert_eq!(withdrawn.attempts, 1);
    let stored = store
        .read_to_vec(ReadRequest::stream("account-1"))
        .await
        .unwrap();
    assert_eq!(withdrawn.position, Some(stored[2].position));
    let shapes: Vec<_> = stored
        .iter()
        .map(|e| {
            (
                e.event_type.to_string(),
                e.schema_version,
                String::from_utf8(e.data.to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [
            ("Opened".into(), 1, r#"{"owner":"ann"}"#.into()),
            ("Deposited".into(), 1, r#"{"amount":100}"#.into()),
            ("Withdrawn".into(), 1, r#"{"amount":30}"#.into()),
        ]
    );
    let loaded = h.load::<BankAccount>("1").await.unwrap();
    assert_eq!(loaded.state.balance, 70);
    assert_eq!(loaded.state.owner.as_deref(), Some("ann"));
    assert_eq!((loaded.revision, loaded.replayed), (Some(2), 3));
}

async fn a_refused_command_writes_nothing<S: EventStore + Clone + 'static>(store: S) {
    let h = CommandHandler::new(store.clone());
    let ctx = Context::new();
    let refused = h
        .handle::<BankAccount>("1", &C::Deposit { amount: 5 }, &ctx)
        .await;
    assert_eq!(refused, Err(CommandError::Rejected(Refused::NotOpen)));
    assert_eq!(store.head().await.unwrap(), None);
    h.handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    h.handle::<BankAccount>("1", &C::Deposit { amount: 70 }, &ctx)
        .await
        .unwrap();
    let head = store.head().await.unwrap();
    let refused = h
        .handle::<BankAccount>("1", &C::Withdraw { amount: 500 }, &ctx)
        .await;
    assert_eq!(
        refused,
        Err(CommandError::Rejected(Refused::InsufficientFunds {
            balance: 70,
            wanted: 500
        }))
    );
    assert_eq!(
        refused.unwrap_err().to_string(),
        "the command was refused: the balance is 70, less than 500"
    );
    assert_eq!(store.head().await.unwrap(), head);
}

async fn a_decision_of_no_events_writes_nothing<S: EventStore + Clone + 'static>(store: S) {
    let h = CommandHandler::new(store.clone());
    let ctx = Context::new();
    h.handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    let head = store.head().await.unwrap();
    let again = h
        .handle::<BankAccount>("1", &open("bob"), &ctx)
        .await
        .unwrap();
    assert_eq!(
        (again.revision, again.position, again.written),
        (Some(0), None, 0)
    );
    assert_eq!(store.head().await.unwrap(), head);
    let state = h.load::<BankAccount>("1").await.unwrap().state;
    assert_eq!(state.owner.as_deref(), Some("ann"));
}

async fn a_conflict_is_decided_again_on_the_new_state<S: EventStore + Clone + 'static>(store: S) {
    let ctx = Context::new();
    let plain = CommandHandler::new(store.clone());
    plain
        .handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    plain
        .handle::<BankAccount>("1", &C::Deposit { amount: 100 }, &ctx)
        .await
        .unwrap();
    // Another writer withdraws 80 between the handler's read and its append: the decision
    // made on a balance of 100 conflicts, and the second, on 20, refuses.
    let racing = Racing::new(store.clone(), 1, AccountEvent::Withdrawn { amount: 80 });
    let h = CommandHandler::new(racing.clone());
    let second = h
        .handle::<BankAccount>("1", &C::Withdraw { amount: 80 }, &ctx)
        .await;
    assert_eq!(
        second,
        Err(CommandError::Rejected(Refused::InsufficientFunds {
            balance: 20,
            wanted: 80
        }))
    );
    assert_eq!(racing.appends.load(Ordering::SeqCst), 1);
    // With room for it, a conflicting decision is made again and lands after the other.
    let racing = Racing::new(store.clone(), 1, AccountEvent::Deposited { amount: 1 });
    let h = CommandHandler::new(racing);
    let done = h
        .handle::<BankAccount>("1", &C::Deposit { amount: 5 }, &ctx)
        .await
        .unwrap();
    assert_eq!((done.attempts, done.revision), (2, Some(4)));
    let state = plain.load::<BankAccount>("1").await.unwrap().state;
    assert_eq!(state.balance, 100 - 80 + 1 + 5);
}

async fn attempts_are_bounded<S: EventStore + Clone + 'static>(store: S) {
    let ctx = Context::new();
    CommandHandler::new(store.clone())
        .handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    let fast = Retry {
        attempts: 3,
        first_pause: Duration::from_millis(1),
        max_pause: Duration::from_millis(2),
    };
    for (retry, attempts) in [(Retry::NEVER, 1), (fast, 3)] {
        let racing = Racing::new(
            store.clone(),
            u32::MAX,
            AccountEvent::Deposited { amount: 1 },
        );
        let h = CommandHandler::new(racing.clone()).with_retry(retry);
        let r = h
            .handle::<BankAccount>("1", &C::Deposit { amount: 5 }, &ctx)
            .await;
        match r {
            Err(CommandError::Contended {
                attempts: a,
                last: Error::WrongExpectedRevision { .. },
            }) => assert_eq!(a, attempts),
            other => panic!("expected contention after {attempts} attempts, got {other:?}"),
        }
        assert_eq!(racing.appends.load(Ordering::SeqCst), attempts);
    }
    // Only the other writer's events were written.
    let stored = store
        .read_to_vec(ReadRequest::stream("account-1"))
        .await
        .unwrap();
    assert!(stored[1..]
        .iter()
        .all(|e| *e.event_type == *"Deposited" && e.data == br#"{"amount":1}"#[..]));
    assert_eq!(stored.len(), 1 + 1 + 3);
}

async fn an_unanswered_append_is_sent_again_and_lands_once<S: EventStore + Clone + 'static>(
    store: S,
) {
    let ctx = Context::new();
    let dropping = Dropping {
        inner: store.clone(),
        left: Arc::new(AtomicU32::new(2)),
    };
    let h = CommandHandler::new(dropping).with_retry(Retry {
        attempts: 3,
        first_pause: Duration::from_millis(1),
        max_pause: Duration::from_millis(1),
    });
    let opened = h
        .handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    assert_eq!((opened.revision, opened.attempts), (Some(0), 3));
    let stored = store
        .read_to_vec(ReadRequest::stream("account-1"))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "the append landed once: {stored:?}");
    assert_eq!(opened.position, Some(stored[0].position));
    // With no attempt left, the lost answer is the caller's to see.
    let dropping = Dropping {
        inner: store.clone(),
        left: Arc::new(AtomicU32::new(1)),
    };
    let h = CommandHandler::new(dropping).with_retry(Retry::NEVER);
    let r = h
        .handle::<BankAccount>("1", &C::Deposit { amount: 1 }, &ctx)
        .await;
    assert!(
        matches!(r, Err(CommandError::Store(Error::Unavailable(_)))),
        "{r:?}"
    );
}

async fn concurrent_handlers_lose_no_decision<S: EventStore + Clone + 'static>(store: S) {
    race_on_one_account(CommandHandler::new(store)).await;
}

async fn concurrent_handlers_sharing_kept_states_lose_no_decision<
    S: EventStore + Clone + 'static,
>(
    store: S,
) {
    race_on_one_account(CommandHandler::new(store).with_state_cache(4)).await;
}

/// 16 clones of `h` deposit 5 times each into one account at once.
async fn race_on_one_account<S: EventStore + Clone + 'static>(h: CommandHandler<S>) {
    let ctx = Context::new();
    let h = h.with_retry(Retry {
        attempts: 200,
        first_pause: Duration::from_millis(1),
        max_pause: Duration::from_millis(20),
    });
    h.handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (h, ctx) = (h.clone(), ctx.clone());
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for _ in 0..5 {
                let r = h
                    .handle::<BankAccount>("1", &C::Deposit { amount: 1 }, &ctx)
                    .await
                    .unwrap();
                revisions.push(r.revision.unwrap());
            }
            revisions
        }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.extend(t.await.unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=80).collect::<Vec<u64>>());
    let loaded = h.load::<BankAccount>("1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.revision), (80, Some(80)));
}

async fn a_kept_state_decides_the_next_command_and_is_checked_when_stale<
    S: EventStore + Clone + 'static,
>(
    store: S,
) {
    let ctx = Context::new();
    let cached = CommandHandler::new(store.clone()).with_state_cache(8);
    let plain = CommandHandler::new(store.clone());
    let deposit = |amount| C::Deposit { amount };
    cached
        .handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    let r = cached
        .handle::<BankAccount>("1", &deposit(100), &ctx)
        .await
        .unwrap();
    assert_eq!((r.attempts, r.revision), (1, Some(1)));
    // Another writer moves the stream on: the state kept at revision 1 is stale. Decided
    // on it, the append is refused; loaded again, the command lands. (Without the kept
    // state, the handler would have read the stream first and decided once.)
    plain
        .handle::<BankAccount>("1", &deposit(1), &ctx)
        .await
        .unwrap();
    let r = cached
        .handle::<BankAccount>("1", &deposit(5), &ctx)
        .await
        .unwrap();
    assert_eq!((r.attempts, r.revision), (2, Some(3)));
    let r = cached
        .handle::<BankAccount>("1", &deposit(1), &ctx)
        .await
        .unwrap();
    assert_eq!((r.attempts, r.revision), (1, Some(4)));
    // A refusal is never made on a kept state alone: the kept balance (107) would refuse
    // this withdrawal, but another writer has deposited since.
    plain
        .handle::<BankAccount>("1", &deposit(100), &ctx)
        .await
        .unwrap();
    let r = cached
        .handle::<BankAccount>("1", &C::Withdraw { amount: 200 }, &ctx)
        .await
        .unwrap();
    assert_eq!((r.revision, r.written), (Some(6), 1));
    // And a refusal on the stream as it is stands.
    let refused = cached
        .handle::<BankAccount>("1", &C::Withdraw { amount: 8 }, &ctx)
        .await;
    assert_eq!(
        refused,
        Err(CommandError::Rejected(Refused::InsufficientFunds {
            balance: 7,
            wanted: 8
        }))
    );
    let loaded = plain.load::<BankAccount>("1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.revision), (7, Some(6)));

    // A cache of one state keeps the last aggregate's: the first is loaded again, so a
    // writer that moved it on costs no refused append.
    let one = CommandHandler::new(store.clone()).with_state_cache(1);
    for id in ["2", "3"] {
        one.handle::<BankAccount>(id, &open("bob"), &ctx)
            .await
            .unwrap();
    }
    plain
        .handle::<BankAccount>("2", &deposit(3), &ctx)
        .await
        .unwrap();
    plain
        .handle::<BankAccount>("3", &deposit(3), &ctx)
        .await
        .unwrap();
    let r = one
        .handle::<BankAccount>("3", &deposit(1), &ctx)
        .await
        .unwrap();
    assert_eq!((r.attempts, r.revision), (2, Some(2)), "account 3 was kept");
    let r = one
        .handle::<BankAccount>("2", &deposit(1), &ctx)
        .await
        .unwrap();
    assert_eq!(
        (r.attempts, r.revision),
        (1, Some(2)),
        "account 2 was not kept"
    );
}

async fn events_carry_the_context<S: EventStore + Clone + 'static>(store: S) {
    let h = CommandHandler::new(store.clone());
    let ctx = Context::new().with_actor("user-7").with("ip", "10.0.0.1");
    h.handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    let e = &store
        .read_to_vec(ReadRequest::stream("account-1"))
        .await
        .unwrap()[0];
    assert_eq!(e.metadata.correlation_id, Some(ctx.correlation_id));
    assert_eq!(e.metadata.causation_id, Some(ctx.causation_id));
    assert_eq!(e.metadata.actor.as_deref(), Some("user-7"));
    assert_eq!(
        e.metadata.extra.get("ip").map(String::as_str),
        Some("10.0.0.1")
    );
}

async fn a_reaction_joins_the_transaction_of_its_cause<S: EventStore + Clone + 'static>(store: S) {
    let h = CommandHandler::new(store.clone());
    let ctx = Context::new().with_actor("user-7");
    h.handle::<BankAccount>("1", &open("ann"), &ctx)
        .await
        .unwrap();
    let cause = store
        .read_to_vec(ReadRequest::stream("account-1"))
        .await
        .unwrap()
        .remove(0);
    // A welcome bonus paid into a second account in reaction to the opening.
    let reaction = Context::caused_by(&cause);
    h.handle::<BankAccount>("2", &open("bank"), &reaction)
        .await
        .unwrap();
    let effect = store
        .read_to_vec(ReadRequest::stream("account-2"))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(effect.metadata.correlation_id, Some(ctx.correlation_id));
    assert_eq!(effect.metadata.causation_id, Some(cause.id));
    assert_eq!(effect.metadata.actor.as_deref(), Some("user-7"));
    // A cause with no correlation id starts the transaction with its own id.
    let mut bare = cause.clone();
    bare.metadata.correlation_id = None;
    assert_eq!(Context::caused_by(&bare).correlation_id, cause.id);
}
