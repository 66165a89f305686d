//! The conformance suite: what every [`EventStore`] must do, written against the trait alone.
//!
//! [`run_all`] runs every check, each on a fresh empty store, and prints each check's name
//! before running it. The checks are also public one by one; most take `&S`, and the ones that
//! share the store with spawned tasks take `&Arc<S>`. A failing check panics with a message naming what went wrong.
//!
//! Every wait on a subscription or a spawned task is bounded (10 s), so a broken backend fails
//! instead of hanging. The suite needs a tokio runtime with time enabled; a multi-threaded one
//! makes the concurrency checks more searching.

use std::future::Future;
use std::sync::Arc;

use crate::EventStore;

mod append;
mod concurrency;
mod info;
mod read;
mod subscribe;
mod util;

pub use append::*;
pub use concurrency::*;
pub use info::*;
pub use read::*;
pub use subscribe::*;

/// Runs every check, each against a new empty store from `new_store`.
pub async fn run_all<S, F, Fut>(mut new_store: F)
where
    S: EventStore + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    let mut count = 0;
    macro_rules! check {
        ($name:ident) => {{
            eprintln!("conformance: {}", stringify!($name));
            let store = new_store().await;
            $name(&store).await;
            count += 1;
        }};
    }
    macro_rules! check_shared {
        ($name:ident) => {{
            eprintln!("conformance: {}", stringify!($name));
            let store = Arc::new(new_store().await);
            $name(&store).await;
            count += 1;
        }};
    }

    check!(append_and_read_back);
    check!(expected_revision_any);
    check!(expected_revision_no_stream);
    check!(expected_revision_stream_exists);
    check!(expected_revision_exact);
    check!(multi_stream_append_is_atomic);
    check!(condition_passes_without_match);
    check!(condition_fails_on_match);
    check!(condition_with_expected_revision);
    check!(condition_query_items);
    check!(empty_query_is_rejected);
    check!(idempotent_retry);
    check!(idempotent_retry_multi_stream);
    check!(event_id_conflicts);
    check!(invalid_input_is_rejected);

    check!(read_stream_forward_and_backward);
    check!(read_all_forward_and_backward);
    check!(read_by_event_types);
    check!(read_by_query);
    check!(read_by_category);
    check!(read_missing_stream_is_empty);
    check!(time_travel_as_of_position);
    check!(time_travel_as_of_time);

    check!(stream_info);
    check!(list_streams);
    check!(list_categories);
    check!(position_at);
    check!(head_tracks_the_log);

    check!(subscribe_from_start);
    check!(subscribe_from_after);
    check!(subscribe_from_now);
    check!(subscribe_filtered);
    check!(subscribe_checkpoints);
    check_shared!(subscribe_catch_up_race);

    check_shared!(concurrent_expected_revision_race);
    check_shared!(concurrent_writers);

    eprintln!("conformance: all {count} checks passed");
}
