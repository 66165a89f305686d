//! The client, talking to a real server over loopback, passes the same conformance suite as
//! the embedded engine, with its appends over the framed protocol and over gRPC.

use std::sync::atomic::{AtomicUsize, Ordering};

use annal_client::Client;
use annal_core::testkit::conformance;
use annal_server::{Config, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_passes_the_conformance_suite_against_a_server() {
    conformance_against_servers(true).await;
}

/// Appends over gRPC too (as over `https://`, or when a server does not speak the framed
/// protocol), not only over the framed protocol that is the default for `http://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_passes_the_conformance_suite_with_appends_over_grpc() {
    conformance_against_servers(false).await;
}

async fn conformance_against_servers(framed_appends: bool) {
    let root = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    // Each check gets an empty store: a server of its own on a port the system picks.
    let servers = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let dir = root
            .path()
            .join(n.fetch_add(1, Ordering::Relaxed).to_string());
        let servers = &servers;
        async move {
            let server = Server::start(Config::new(dir, "127.0.0.1:0".parse().unwrap()))
                .await
                .unwrap();
            let url = format!("http://{}", server.local_addr());
            servers.lock().unwrap().push(server);
            Client::builder(url)
                .framed_appends(framed_appends)
                .connect()
                .await
                .unwrap()
        }
    })
    .await;
    for server in servers.into_inner().unwrap() {
        server.shutdown().await.unwrap();
    }
}
