//! The in-memory reference store passes the conformance suite, one test per check, on a
//! multi-threaded runtime and on one thread.

use annal_core::testkit::MemoryStore;

async fn new_store() -> (MemoryStore, ()) {
    (MemoryStore::new(), ())
}

annal_core::conformance_tests!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    new_store
);

mod on_one_thread {
    use super::new_store;

    annal_core::conformance_tests!(
        #[tokio::test(flavor = "current_thread")]
        new_store
    );
}
