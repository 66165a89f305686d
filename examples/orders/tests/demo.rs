//! The example as a user runs it: the story on an embedded store into SQLite, the story
//! against a server into PostgreSQL, and the subcommands on a folder.

use std::process::Output;

use example_support::testing::{run, stdout, twice_against_a_server};

const BIN: &str = env!("CARGO_BIN_EXE_orders");

fn orders(args: &[&str]) -> Output {
    run(BIN, args)
}

fn assert_story(out: &str) {
    for line in [
        "   order status: cancelled 4, delivered 4, packed 4, paid 4, placed 4, shipped 4",
        "   shipping: dhl shipped 4, delivered 4",
        "   shipping: ups shipped 4, delivered 0",
        "   inventory reserved by this run's open orders: sku-0 8, sku-1 4, sku-2 8, sku-3 4, sku-gift 12",
        "   ann: 6 orders paid, 90 in all",
        "   bob: 12 orders paid, 300 in all",
        "   cy: 12 orders paid, 420 in all",
        "   the first three kept running: order status holds 36 orders of this run",
        "   rows that differ from a replay of the log: order_status 0, shipping 0, inventory 0, customer_revenue 0",
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
    }
}

#[test]
fn the_story_on_an_embedded_store() {
    let out = stdout(&orders(&[]));
    assert!(out.starts_with("E-commerce orders on Annal (embedded store, read models in sqlite)"));
    assert_story(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_against_a_server_into_postgres() {
    // Twice on one server: each story has ids of its own.
    let (url, outs) = twice_against_a_server(BIN).await;
    for out in outs {
        assert!(out.starts_with(&format!(
            "E-commerce orders on Annal ({url} store, read models in postgres)"
        )));
        assert_story(&out);
    }
}

#[test]
fn the_subcommands_on_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let run = |args: &[&str]| orders(&[&["--data", data], args].concat());
    stdout(&run(&["demo"]));
    let status = stdout(&run(&["status"]));
    let head = status
        .lines()
        .next()
        .unwrap()
        .strip_prefix("log head: ")
        .unwrap();
    for model in ["customer_revenue", "inventory", "order_status", "shipping"] {
        assert!(
            status.contains(&format!("{model:<17} version 1 at position {head}\n")),
            "{status}"
        );
    }
    assert!(
        stdout(&run(&["rebuild", "inventory"])).starts_with(&format!(
            "inventory rebuilt: version 1, through position {head}"
        ))
    );
    let clean = stdout(&run(&["reconcile", "shipping"]));
    assert!(clean.ends_with(": no differences\n"), "{clean}");
    assert_eq!(
        stdout(&run(&["failures", "customer-revenue"])),
        "customer_revenue: no failed events\n"
    );
    let wrong = run(&["rebuild", "nothing"]);
    assert_eq!(
        wrong.status.code(),
        Some(2),
        "clap refuses an unknown read model"
    );
}
