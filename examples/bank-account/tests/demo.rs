//! The example as a user runs it: the story on an embedded store into SQLite, the story
//! against a server into PostgreSQL, and the subcommands on a folder of its own.

use std::process::Output;

use example_support::testing::{run, stdout, twice_against_a_server};

const BIN: &str = env!("CARGO_BIN_EXE_bank-account");

fn bank(args: &[&str]) -> Output {
    run(BIN, args)
}

/// The lines of the story that do not change from run to run.
fn assert_story(out: &str) {
    for line in [
        "   deposited 100 and 50, withdrew 30: balance 120",
        "   alice: refused: insufficient funds: the balance is 120, the withdrawal 500",
        "   balance now: 0",
        "   balance as of just before the last withdrawal: 120",
        "    #0 opened for Alice by teller-7",
        "    #4 withdrew 120   by atm-42",
        "   the answer: atm-42 withdrew 120 (revision 4), taking the balance from 120 to 0",
        "   the balances table now says 1000",
        "   reconciliation: balance differs: live 1000, replay of the log 0; repaired",
        "   the balances table says 0 again",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
}

#[test]
fn the_story_on_an_embedded_store() {
    let out = stdout(&bank(&[]));
    assert!(out.starts_with("Bank accounts on Annal (embedded store, read models in sqlite)"));
    assert_story(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_against_a_server_into_postgres() {
    // Twice on one server: each story has ids of its own.
    let (url, outs) = twice_against_a_server(BIN).await;
    for out in outs {
        assert!(out.starts_with(&format!(
            "Bank accounts on Annal ({url} store, read models in postgres)"
        )));
        assert_story(&out);
    }
}

#[test]
fn the_subcommands_on_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let run = |args: &[&str]| bank(&[&["--data", data], args].concat());
    assert_eq!(stdout(&run(&["open", "7", "Bob"])), "7 (Bob): balance 0\n");
    assert_eq!(
        stdout(&run(&["deposit", "7", "40"])),
        "7 (Bob): balance 40\n"
    );
    let refused = run(&["withdraw", "7", "41"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "error: 7: refused: insufficient funds: the balance is 40, the withdrawal 41\n"
    );
    assert_eq!(
        stdout(&run(&["withdraw", "7", "15"])),
        "7 (Bob): balance 25\n"
    );
    let history = stdout(&run(&["history", "7"]));
    assert_eq!(history.lines().count(), 3, "{history}");
    assert!(
        history.contains("#2 withdrew 15    by cli at "),
        "{history}"
    );
    assert_eq!(
        stdout(&run(&["reconcile"])),
        "balances: compared with a replay of positions 0 to 2: no differences\n"
    );
    assert_eq!(
        stdout(&run(&["rebuild"])),
        "balances rebuilt: version 1, through position 2\n"
    );
    assert_eq!(stdout(&run(&["balance", "7"])), "7 (Bob): balance 25\n");
    assert_eq!(stdout(&run(&["failures"])), "balances: no failed events\n");
    let before = stdout(&run(&["balance", "7", "--as-of", "2000-01-01T00:00:00Z"]));
    assert_eq!(before, "7 as of 2000-01-01T00:00:00.000000Z: 0\n");
}
