//! The offline commands against real store folders.

use std::path::Path;
use std::process::Command;

use annal_core::{AppendRequest, ExpectedRevision, NewEvent};
use annal_engine::Store;

fn annal(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_annal"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn make_store(dir: &Path, batches: u64) {
    let store = Store::open(dir).unwrap();
    for i in 0..batches {
        let mut e = NewEvent::new("Deposited", format!("{{\"amount\":{i}}}")).with_tag("bank");
        e.metadata.actor = Some("teller-7".into());
        store
            .append_blocking(AppendRequest::stream(
                format!("account-{}", i % 4),
                ExpectedRevision::Any,
                vec![e, NewEvent::new("Audited", b"{}".to_vec())],
            ))
            .unwrap();
    }
    store.close().unwrap();
}

fn segment(dir: &Path) -> std::path::PathBuf {
    dir.join("segments").join(format!("{:020}.seg", 0))
}

#[test]
fn check_passes_a_healthy_store_and_dump_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path(), 20);
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = annal(&["check", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("40 events in 4 streams"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");

    // With too little memory for every head at once, in passes, to the same result.
    let (code, out, err) = annal(&["check", d, "--memory", "45000000"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("40 events in 4 streams"), "{out}");
    assert!(out.contains("read in 7 passes"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
    let (code, _, err) = annal(&["check", d, "--memory", "1000"]);
    assert_eq!(code, 2, "a memory below 1 MiB is refused: {err}");
    assert!(err.contains("--memory"), "{err}");

    let (code, out, _) = annal(&["dump", d, "--json", "--stream", "account-1"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0]["stream_id"], "account-1");
    assert_eq!(lines[0]["data"]["amount"], 1);
    assert_eq!(lines[0]["metadata"]["actor"], "teller-7");
    assert_eq!(lines[1]["revision"], 1);

    let (code, out, _) = annal(&["dump", d, "--from", "38"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.starts_with("#38"), "{out}");
}

#[test]
fn check_reports_damage_inside_the_log() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path(), 20);
    let seg = segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[300] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let (code, out, _) = annal(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("problem:"), "{out}");
    assert!(out.contains("checksum"), "{out}");
    // The checkpoint covers the damaged record, so opening does not read it; reading it
    // reports the corruption instead of returning wrong events.
    let store = Store::open(dir.path()).unwrap();
    let err = store
        .read_iter(annal_core::ReadRequest::all())
        .unwrap()
        .find_map(Result::err)
        .expect("the damaged record is reported");
    // It names the segment file and where in that file the damaged record starts.
    let annal_core::Error::Corruption { file, offset, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(Path::new(file), seg, "{err}");
    assert!((64..=300).contains(offset), "{err}");
}

#[test]
fn check_notes_a_torn_tail_and_reports_a_damaged_index() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path(), 5);
    let seg = segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2]);
    std::fs::write(&seg, &bytes).unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, _) = annal(&["check", d]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("note:") && out.contains("cut off on the next open"),
        "{out}"
    );

    let run = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let original = std::fs::read(&run).unwrap();
    let mut idx = original.clone();
    idx[60] ^= 1; // inside the first entry, past the 48-byte header
    std::fs::write(&run, idx).unwrap();
    let (code, out, _) = annal(&["check", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("index block 0 checksum mismatch"), "{out}");

    // A run that is intact in itself but belongs to another store.
    let other = tempfile::tempdir().unwrap();
    make_store(other.path(), 6);
    let foreign = std::fs::read_dir(other.path().join("index"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&foreign, &run).unwrap();
    let (code, out, _) = annal(&["check", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("index disagrees with the log"), "{out}");
}

#[test]
fn errors_read_well() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = annal(&["check", dir.path().join("nope").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: checking"), "{err}");
    assert!(err.contains("not an annal store"), "{err}");
}
