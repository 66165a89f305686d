//! The conformance suite: what every [`EventStore`] must do, written against the trait alone.
//!
//! [`conformance_tests!`](crate::conformance_tests) emits one test per check for a backend,
//! each on a fresh empty store. The checks are public one by one; most take `&S`, and the
//! ones that share the store with spawned tasks take `&Arc<S>`. A failing check panics with
//! a message naming what went wrong.
//!
//! Every wait on a subscription or a spawned task is bounded (10 s), so a broken backend fails
//! instead of hanging. The suite needs a tokio runtime with time enabled; a multi-threaded one
//! makes the concurrency checks more searching.

mod append;
mod concurrency;
mod info;
mod no_stream;
mod read;
mod snapshots;
mod subscribe;
mod util;

pub use append::*;
pub use concurrency::*;
pub use info::*;
pub use no_stream::*;
pub use read::*;
pub use snapshots::*;
pub use subscribe::*;

/// Emits one test per conformance check, each on a fresh store, so that one failure does
/// not hide the others and a check can be run by name (`cargo test append_and_read_back`).
///
/// Give it the test attribute to put on each test (a tokio test: the checks need a runtime
/// with time enabled, and a multi-threaded one makes the concurrency checks more searching)
/// and the path of an async fn that returns a new empty store and a guard kept until the
/// check ends (a temporary folder, a server):
///
/// ```ignore
/// async fn new_store() -> (MyStore, tempfile::TempDir) { ... }
///
/// annal_core::conformance_tests!(
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     new_store
/// );
/// ```
#[macro_export]
macro_rules! conformance_tests {
    (#[$attr:meta] $new:path) => {
        $crate::conformance_tests!(@checks #[$attr] $new;
            append_and_read_back,
            expected_revision_any,
            expected_revision_no_stream,
            expected_revision_stream_exists,
            expected_revision_exact,
            multi_stream_append_is_atomic,
            condition_passes_without_match,
            condition_fails_on_match,
            condition_with_expected_revision,
            condition_query_items,
            empty_query_is_rejected,
            idempotent_retry,
            idempotent_retry_multi_stream,
            event_id_conflicts,
            invalid_input_is_rejected,
            events_of_no_stream,
            events_of_no_stream_are_guarded_by_conditions,
            events_of_no_stream_expect_any,
            every_event_is_one_query,
            read_stream_forward_and_backward,
            read_all_forward_and_backward,
            read_by_event_types,
            read_by_query,
            read_by_category,
            read_by_correlation_and_actor,
            read_by_combined_filters,
            reads_say_the_head_they_were_served_at,
            read_missing_stream_is_empty,
            time_travel_as_of_position,
            time_travel_as_of_time,
            stream_info,
            list_streams,
            list_categories,
            position_at,
            head_tracks_the_log,
            subscribe_from_start,
            subscribe_from_after,
            subscribe_after_beyond_the_head_is_refused,
            subscribe_from_now,
            subscribe_filtered,
            subscribe_checkpoints,
            snapshots_put_get_and_delete,
            snapshots_kept_per_stream_are_bounded,
            invalid_snapshots_are_refused,
            snapshots_are_not_events;
            shared:
            subscribe_catch_up_race,
            concurrent_expected_revision_race,
            concurrent_writers
        );
    };
    (@checks #[$attr:meta] $new:path; $($check:ident),*; shared: $($shared:ident),*) => {
        $(
            #[$attr]
            async fn $check() {
                let (store, guard) = $new().await;
                $crate::testkit::conformance::$check(&store).await;
                drop(store);
                drop(guard);
            }
        )*
        $(
            #[$attr]
            async fn $shared() {
                let (store, guard) = $new().await;
                let store = ::std::sync::Arc::new(store);
                $crate::testkit::conformance::$shared(&store).await;
                drop(store);
                drop(guard);
            }
        )*
    };
}
