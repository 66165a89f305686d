//! Properties of the toolkit over random histories, on the in-memory reference store:
//! handlers under random conflicts never lose nor double a decision, and loading as of any
//! revision equals folding that prefix of the stream.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use annal_core::testkit::MemoryStore;
use annal_core::{EventStoreExt, ReadRequest};
use annal_cqrs::{
    decode_recorded, At, CommandError, CommandHandler, Context, Decider, Retry, Upcasters,
};
use common::{Account, AccountCommand as C, AccountEvent, BankAccount, Racing};
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
    #[test]
    fn handlers_under_random_conflicts_lose_and_double_nothing(
        ops in prop::collection::vec((command(), 0u32..5, any::<bool>()), 1..25)
    ) {
        runtime().block_on(async {
            let store = MemoryStore::new();
            let retry = Retry { attempts: ATTEMPTS, first_pause: Duration::ZERO, max_pause: Duration::ZERO };
            for (c, races, deposit) in ops {
                let other = if deposit {
                    AccountEvent::Deposited { amount: 1 }
                } else {
                    AccountEvent::Withdrawn { amount: 1 }
                };
                let racing = Racing::new(store.clone(), races, other);
                let h = CommandHandler::new(racing.clone()).with_retry(retry);
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
}
