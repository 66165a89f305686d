//! The client, talking to a real server over loopback, passes the same conformance suite as
//! the embedded engine, one test per check: with its appends and reads over the framed
//! protocol, with everything over gRPC, and with the in-memory reference store behind the
//! server (the server's handlers are the same whatever store they serve; its framed reads
//! take the path of stores without stored reads).

use annal_client::Client;
use annal_core::testkit::MemoryStore;
use annal_server::{Backend, Config, Plain, Server};

/// A server of the test's own on a port the system picks, shut down (and its store
/// closed) when the check is over.
struct Served {
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(server.shutdown())
            })
            .unwrap();
        }
    }
}

/// A client of a new server over `store` (the engine in a folder of its own when `None`).
async fn client_of<S: Backend>(store: Option<S>, framed: bool) -> (Client, Served) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let server = match store {
        Some(store) => Server::serve(store, config).await,
        None => Server::start(config).await,
    }
    .unwrap();
    let client = Client::builder(format!("http://{}", server.local_addr()))
        .framed(framed)
        .connect()
        .await
        .unwrap();
    let served = Served {
        server: Some(server),
        _dir: dir,
    };
    (client, served)
}

async fn new_store() -> (Client, Served) {
    client_of(None::<Plain<MemoryStore>>, true).await
}

annal_core::conformance_tests!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    new_store
);

/// Appends and reads over gRPC too (as over `https://`, or when a server does not speak the
/// framed protocol), not only over the framed protocol that is the default for `http://`.
mod appends_over_grpc {
    use super::*;

    async fn new_store() -> (Client, Served) {
        client_of(None::<Plain<MemoryStore>>, false).await
    }

    annal_core::conformance_tests!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        new_store
    );
}

/// The server's handlers over another backend: the in-memory reference store.
mod memory_store_behind_the_server {
    use super::*;

    async fn new_store() -> (Client, Served) {
        client_of(Some(Plain(MemoryStore::new())), true).await
    }

    annal_core::conformance_tests!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        new_store
    );
}
