//! Loading the past: a store holding three versions of an event type (and a renamed and a
//! split one) loads as current events only; time travel by revision, position and instant.
//! Each check runs on the embedded engine and through a client of a server.

mod common;

use annal_core::{
    AppendRequest, EventStore, EventStoreExt, ExpectedRevision, NewEvent, ReadRequest, Timestamp,
};
use annal_cqrs::{
    render_history, At, CommandHandler, Context, Decider, Event, LoadError, Upcast, Upcasters,
};
use common::{AccountCommand as C, BankAccount};
use serde::{Deserialize, Serialize};
use serde_json::json;

both_ways!(
    old_versions_load_as_current_events,
    an_event_no_upcaster_brings_up_to_date_is_named,
    time_travel_by_revision_position_and_instant,
    a_history_reads_as_sentences,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum WalletEvent {
    /// Version 3; version 1 held cents, version 2 had no currency, and before that the type
    /// was called `MoneyIn`.
    Deposited {
        amount: u64,
        currency: String,
    },
    Withdrawn {
        amount: u64,
    },
}

impl Event for WalletEvent {
    fn schema_version(event_type: &str) -> u32 {
        if event_type == "Deposited" {
            3
        } else {
            1
        }
    }
}

/// A wallet whose state is the events it was given, to see exactly what loading decodes.
struct Wallet;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Decider for Wallet {
    const CATEGORY: &'static str = "wallet";
    type State = Vec<WalletEvent>;
    type Command = ();
    type Event = WalletEvent;
    type Error = Never;

    fn decide(_: &Self::State, _: &()) -> Result<Vec<WalletEvent>, Never> {
        Ok(vec![])
    }

    fn evolve(mut s: Self::State, e: &WalletEvent) -> Self::State {
        s.push(e.clone());
        s
    }
}

fn upcasters() -> Upcasters {
    Upcasters::new()
        .rename("MoneyIn", 1, "Deposited")
        .on("Deposited", 1, |d| {
            let cents = d["cents"].as_u64().ok_or("no cents")?;
            Ok(vec![Upcast::new(
                "Deposited",
                2,
                json!({ "amount": cents / 100 }),
            )])
        })
        .on("Deposited", 2, |mut d| {
            d["currency"] = json!("EUR");
            Ok(vec![Upcast::new("Deposited", 3, d)])
        })
        // An exchange was one event; it is now a withdrawal and a deposit.
        .on("Exchanged", 1, |d| {
            Ok(vec![
                Upcast::new("Withdrawn", 1, json!({ "amount": d["out"] })),
                Upcast::new("Deposited", 2, json!({ "amount": d["in"] })),
            ])
        })
}

fn stored(event_type: &str, version: u32, data: serde_json::Value) -> NewEvent {
    NewEvent::new(event_type, data.to_string()).with_schema_version(version)
}

async fn old_versions_load_as_current_events<S: EventStore + Clone + 'static>(store: S) {
    store
        .append(AppendRequest::stream(
            "wallet-1",
            ExpectedRevision::NoStream,
            vec![
                stored("MoneyIn", 1, json!({ "cents": 1000 })),
                stored("Deposited", 1, json!({ "cents": 300 })),
                stored("Deposited", 2, json!({ "amount": 5 })),
                stored("Deposited", 3, json!({ "amount": 7, "currency": "USD" })),
                stored("Exchanged", 1, json!({ "out": 3, "in": 2 })),
            ],
        ))
        .await
        .unwrap();
    let h = CommandHandler::new(store.clone()).with_upcasters(upcasters());
    let loaded = h.load::<Wallet>("1").await.unwrap();
    let eur = |amount| WalletEvent::Deposited {
        amount,
        currency: "EUR".into(),
    };
    assert_eq!(
        loaded.state,
        [
            eur(10),
            eur(3),
            eur(5),
            WalletEvent::Deposited {
                amount: 7,
                currency: "USD".into()
            },
            WalletEvent::Withdrawn { amount: 3 },
            eur(2),
        ]
    );
    assert_eq!((loaded.replayed, loaded.revision), (5, Some(4)));
    // Time travel goes through the same upcasters.
    let early = h.load_as_of::<Wallet>("1", At::Revision(0)).await.unwrap();
    assert_eq!(early.state, [eur(10)]);
}

async fn an_event_no_upcaster_brings_up_to_date_is_named<S: EventStore + Clone + 'static>(
    store: S,
) {
    let append = |stream: &'static str, e: NewEvent| {
        let store = store.clone();
        async move {
            store
                .append(AppendRequest::stream(
                    stream,
                    ExpectedRevision::Any,
                    vec![e],
                ))
                .await
                .unwrap()
        }
    };
    let h = CommandHandler::new(store.clone()).with_upcasters(upcasters());
    // Written by newer code than this.
    let at = append("wallet-1", stored("Deposited", 4, json!({ "amount": 1 }))).await;
    let e = h.load::<Wallet>("1").await.unwrap_err();
    let LoadError::Codec(c) = e else {
        panic!("expected a codec error, got {e:?}")
    };
    assert_eq!(c.event_type, "Deposited");
    assert_eq!(
        c.to_string(),
        format!(
            "event type 'Deposited' at wallet-1@0, position {}: stored at schema version 4, \
             but this code reads version 3 and no upcaster takes version 4",
            at.first_position
        )
    );
    // An upcaster that fails names the step.
    append("wallet-2", stored("MoneyIn", 1, json!({ "dollars": 1 }))).await;
    let e = h.load::<Wallet>("2").await.unwrap_err().to_string();
    assert!(
        e.contains("upcasting 'Deposited' version 1 failed: no cents"),
        "{e}"
    );
    // Upcasters that loop are stopped.
    let looping = CommandHandler::new(store.clone()).with_upcasters(
        Upcasters::new()
            .rename("Ping", 1, "Pong")
            .rename("Pong", 1, "Ping"),
    );
    append("wallet-3", stored("Ping", 1, json!({}))).await;
    let e = looping.load::<Wallet>("3").await.unwrap_err().to_string();
    assert!(e.contains("do the upcasters loop?"), "{e}");
}

async fn time_travel_by_revision_position_and_instant<S: EventStore + Clone + 'static>(store: S) {
    let h = CommandHandler::new(store.clone());
    let ctx = Context::new();
    let commands = [
        C::Open {
            owner: "ann".into(),
        },
        C::Deposit { amount: 100 },
        C::Deposit { amount: 50 },
        C::Withdraw { amount: 30 },
    ];
    h.handle::<BankAccount>("2", &commands[0], &ctx)
        .await
        .unwrap();
    for c in &commands {
        h.handle::<BankAccount>("1", c, &ctx).await.unwrap();
        // Another stream's event between each, so positions and revisions differ.
        h.handle::<BankAccount>("2", &C::Deposit { amount: 1 }, &ctx)
            .await
            .unwrap();
    }
    let events = store
        .read_to_vec(ReadRequest::stream("account-1"))
        .await
        .unwrap();
    let balance = |n: usize| -> u64 { [0, 0, 100, 150, 120][n] };
    for (rev, e) in events.iter().enumerate() {
        let by_rev = h
            .load_as_of::<BankAccount>("1", At::Revision(rev as u64))
            .await
            .unwrap();
        assert_eq!(
            (by_rev.state.balance, by_rev.revision),
            (balance(rev + 1), Some(rev as u64))
        );
        // At the position of the other stream's event that follows: the same state.
        let by_pos = h
            .load_as_of::<BankAccount>("1", At::Position(e.position + 1))
            .await
            .unwrap();
        assert_eq!(by_pos, by_rev);
        // At the instant the event was recorded: every event recorded by then.
        let by_time = h
            .load_as_of::<BankAccount>("1", At::Time(e.recorded_at))
            .await
            .unwrap();
        let by_then = events
            .iter()
            .filter(|x| x.recorded_at <= e.recorded_at)
            .count();
        assert_eq!(by_time.state.balance, balance(by_then));
        assert_eq!(by_time.revision, Some(by_then as u64 - 1));
    }
    let before = h
        .load_as_of::<BankAccount>("1", At::Time(Timestamp(0)))
        .await
        .unwrap();
    assert_eq!((before.revision, before.state), (None, Default::default()));
    let beyond = h
        .load_as_of::<BankAccount>("1", At::Revision(1_000))
        .await
        .unwrap();
    assert_eq!(beyond, h.load::<BankAccount>("1").await.unwrap());
}

async fn a_history_reads_as_sentences<S: EventStore + Clone + 'static>(store: S) {
    let h = CommandHandler::new(store.clone());
    let ctx = Context::new().with_actor("user-7");
    for c in [
        C::Open {
            owner: "ann".into(),
        },
        C::Deposit { amount: 200 },
        C::Withdraw { amount: 20 },
    ] {
        h.handle::<BankAccount>("1", &c, &ctx).await.unwrap();
    }
    // An event of another kind in the same category, with no actor.
    store
        .append(AppendRequest::stream(
            "account-9",
            ExpectedRevision::Any,
            vec![NewEvent::new("Audited", r#"{"ok":true}"#)],
        ))
        .await
        .unwrap();
    let lines = render_history::<common::AccountEvent, _>(
        &store,
        ReadRequest::category("account"),
        &Upcasters::new(),
    )
    .await
    .unwrap();
    let events = store
        .read_to_vec(ReadRequest::category("account"))
        .await
        .unwrap();
    let when = |i: usize| events[i].recorded_at.to_string()[..19].replace('T', " ");
    let txn = &ctx.correlation_id.simple().to_string()[..8];
    assert_eq!(
        lines,
        [
            format!(
                "{} user-7 opened the account for ann [account-1@0] (correlation {txn})",
                when(0)
            ),
            format!(
                "{} user-7 deposited 200 [account-1@1] (correlation {txn})",
                when(1)
            ),
            format!(
                "{} user-7 withdrew 20 [account-1@2] (correlation {txn})",
                when(2)
            ),
            format!(
                "{} (no actor) Audited {{\"ok\":true}} [account-9@0]",
                when(3)
            ),
        ]
    );
    // A business transaction's history, across streams: a reaction in another account
    // joins it.
    let opened = events[0].clone();
    h.handle::<BankAccount>(
        "2",
        &C::Open {
            owner: "bank".into(),
        },
        &Context::caused_by(&opened),
    )
    .await
    .unwrap();
    let txn = render_history::<common::AccountEvent, _>(
        &store,
        ReadRequest::correlation(ctx.correlation_id),
        &Upcasters::new(),
    )
    .await
    .unwrap();
    assert_eq!(txn.len(), 4, "{txn:#?}");
    assert_eq!(&txn[..3], &lines[..3]);
    assert!(
        txn[3].contains("user-7 opened the account for bank [account-2@0]"),
        "{}",
        txn[3]
    );
}
