//! The example as a user runs it: the story on an embedded store (served in process for
//! the consumer group) into SQLite, the story against a server into PostgreSQL, and the
//! subcommands on a folder.

use std::process::Output;

use example_support::testing::{run, stdout, twice_against_a_server};

const BIN: &str = env!("CARGO_BIN_EXE_video-pipeline");

fn pipeline(args: &[&str]) -> Output {
    run(BIN, args)
}

fn assert_story(out: &str) {
    for line in [
        "1. 12 videos uploaded; 3 workers share them through a consumer group",
        "   every video handled by one worker, in order: 9 completed, 2 failed, 1 processing",
        "   video 8, 40%",
        "   video 1 completed, but its row says processing: stuck now lists video 1, video 8",
        "   the log of video 1 says: uploaded, started, 40%, 80%, completed (1.mp4)",
        "   replaying the events: 1 row differs; repaired",
        "   stuck now lists video 8",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
    let shares = out
        .lines()
        .find_map(|l| l.strip_prefix("   handled per worker: "))
        .unwrap();
    let total: u32 = shares
        .split(", ")
        .map(|s| s.rsplit(' ').next().unwrap().parse::<u32>().unwrap())
        .sum();
    assert_eq!(total, 12, "{shares}");
}

#[test]
fn the_story_on_an_embedded_store() {
    let out = stdout(&pipeline(&[]));
    assert!(out.starts_with("Video processing on Annal (embedded store, read models in sqlite)"));
    assert_story(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_against_a_server_into_postgres() {
    // Twice on one server: each story has ids of its own.
    let (url, outs) = twice_against_a_server(BIN).await;
    for out in outs {
        assert!(out.starts_with(&format!(
            "Video processing on Annal ({url} store, read models in postgres)"
        )));
        assert_story(&out);
    }
}

#[test]
fn the_subcommands_on_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let run = |args: &[&str]| pipeline(&[&["--data", data], args].concat());
    stdout(&run(&["demo", "--videos", "9", "--workers", "2"]));
    let stuck = stdout(&run(&["stuck", "--after", "0s"]));
    assert!(stuck.starts_with("1 stuck videos\n  video "), "{stuck}");
    assert!(
        stuck.trim_end().ends_with(".8: processing by w1 at 40%")
            || stuck.trim_end().ends_with(".8: processing by w2 at 40%"),
        "{stuck}"
    );
    assert_eq!(
        stdout(&run(&["stuck"])),
        "0 stuck videos\n",
        "none for 10 minutes"
    );
    let clean = stdout(&run(&["reconcile"]));
    assert!(clean.ends_with(": no differences\n"), "{clean}");
    assert!(stdout(&run(&["rebuild"])).starts_with("videos rebuilt: version 1, through position "));
    assert_eq!(stdout(&run(&["failures"])), "videos: no failed events\n");
}
