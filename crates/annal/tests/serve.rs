//! `annal serve` as a process: configuration layers and refusals, the client commands against
//! it, a clean stop on SIGTERM, and SIGKILL under load with every acknowledged event kept.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use annal_client::Client;
use annal_core::{
    AppendRequest, EventStore, EventStoreExt, ExpectedRevision, NewEvent, ReadRequest, Uuid,
};

const ANNAL: &str = env!("CARGO_BIN_EXE_annal");

/// What a server has written to stderr so far, and a signal for each new line.
type Log = Arc<(Mutex<String>, Condvar)>;

/// A running `annal serve` and the address it printed.
struct Served {
    child: Child,
    url: String,
    stderr: Log,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Served {
    /// A test that fails halfway does not leave its server running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Served {
    /// Waits for the server to exit and for its stderr to be read to the end, so the log holds
    /// every line the process wrote (the reading thread may lag behind the exit).
    fn wait(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let log = self.stderr.0.lock().unwrap().clone();
        (status, log)
    }

    /// Waits until the server has logged a line holding `needle`.
    fn wait_for_log(&self, needle: &str) {
        let (log, line) = &*self.stderr;
        let (log, waited) = line
            .wait_timeout_while(log.lock().unwrap(), Duration::from_secs(30), |l| {
                !l.contains(needle)
            })
            .unwrap();
        assert!(!waited.timed_out(), "no '{needle}' in the log:\n{log}");
    }
}

fn serve(args: &[&str], envs: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(ANNAL);
    cmd.arg("serve")
        .args(args)
        .env_remove("ANNAL_LISTEN")
        .env_remove("ANNAL_DATA")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr: Log = Arc::new((Mutex::new(String::new()), Condvar::new()));
    let reader = {
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.0.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
                sink.1.notify_all();
            }
        })
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("annal serving on ")
        .unwrap_or_else(|| {
            panic!(
                "unexpected first line {line:?}; stderr: {}",
                stderr.0.lock().unwrap()
            )
        })
        .to_string();
    Served {
        child,
        url: format!("http://{addr}"),
        stderr,
        reader: Some(reader),
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ANNAL)
        .args(args)
        .args(["--server", url])
        .env_remove("ANNAL_SERVER")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_configuration_is_refused_with_every_problem_at_once() {
    let out = Command::new(ANNAL)
        .args([
            "serve",
            "--listen",
            "nowhere",
            "--max-subscriptions",
            "0",
            "--heartbeat",
            "soon",
            "--max-connections",
            "many",
            "--config",
            "/no/such/annal.toml",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "5 problem(s)",
        "listen: 'nowhere'",
        "max_subscriptions: must be at least 1",
        "heartbeat: 'soon'",
        "max_connections: 'many' is not a whole number",
        "cannot read the config file /no/such/annal.toml",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn flags_beat_variables_which_beat_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-file");
    let file = dir.path().join("annal.toml");
    std::fs::write(
        &file,
        format!(
            "data = {:?}\nlisten = \"127.0.0.1:1\"\nlog_format = \"json\"\nheartbeat = \"2s\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    // The variable overrides the file's port 1 (which would fail to bind as non-root, or
    // clash); the flag overrides the variable's log format.
    let s = serve(
        &["--config", file.to_str().unwrap(), "--log-format", "text"],
        &[
            ("ANNAL_LISTEN", "127.0.0.1:0"),
            ("ANNAL_LOG_FORMAT", "json"),
        ],
    );
    assert!(!s.url.ends_with(":1"), "{}", s.url);
    assert!(
        data.join("segments").is_dir(),
        "the file's data folder is used"
    );
    signal(&s.child, "-TERM");
    let (status, log) = s.wait();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("annal is serving"), "{log}");
    assert!(
        !log.trim_start().starts_with('{'),
        "text logs, as the flag says: {log}"
    );
}

#[test]
fn the_client_commands_work_against_a_server_and_exit_with_useful_codes() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(
        &[
            "--data",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let url = s.url.clone();

    let (code, out, err) = cli(
        &url,
        &[
            "append",
            "account-1",
            "--type",
            "Opened",
            "--data",
            r#"{"owner":"ada"}"#,
            "--tag",
            "account:1",
            "-e",
            "no-stream",
            "--actor",
            "teller",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("revision 0, position 0"), "{out}");
    let (code, out, _) = cli(
        &url,
        &[
            "append",
            "account-1",
            "--type",
            "Deposited",
            "--data",
            r#"{"amount":5}"#,
            "-e",
            "0",
            "--json",
        ],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["streams"][0]["revision"], 1);

    // A conflict exits 3 and says what happened.
    let (code, _, err) = cli(
        &url,
        &["append", "account-1", "--type", "Deposited", "-e", "0"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("expected revision 0, actual revision 1"),
        "{err}"
    );
    // Bad input exits 2 before anything is sent.
    let (code, _, err) = cli(
        &url,
        &["append", "account-1", "--type", "X", "--data", "{oops"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--data is not valid JSON"), "{err}");

    let (code, out, _) = cli(&url, &["read", "account-1"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("account-1@0") && lines[0].contains("actor=teller"),
        "{out}"
    );
    let (code, out, _) = cli(
        &url,
        &["read", "account-1", "--backward", "--json", "-n", "1"],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["revision"].as_u64(), v["data"]["amount"].as_u64()),
        (Some(1), Some(5))
    );
    let (_, out, _) = cli(&url, &["read", "account-1", "--as-of", "0", "--json"]);
    assert_eq!(out.lines().count(), 1, "as of position 0: {out}");

    cli(
        &url,
        &[
            "append",
            "order-1",
            "--type",
            "Placed",
            "--tag",
            "account:1",
        ],
    );
    // An event of no stream, found by its tag.
    let (code, out, err) = cli(
        &url,
        &[
            "append",
            "--no-stream",
            "--type",
            "Audited",
            "--tag",
            "account:1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("appended with no stream at position 3"),
        "{out}"
    );
    let (code, _, err) = cli(&url, &["append", "--no-stream", "x-1", "--type", "A"]);
    assert_eq!(code, 2, "a stream and --no-stream: {err}");
    let (code, out, _) = cli(&url, &["read-all", "--tag", "account:1"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .nth(2)
            .is_some_and(|l| l.contains("(no stream)  Audited")),
        "{out}"
    );
    let (code, out, _) = cli(&url, &["read-all", "--tag", "account:1", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    let (_, out, _) = cli(&url, &["read-all", "--category", "order"]);
    assert_eq!(out.lines().count(), 1, "{out}");

    let (code, out, _) = cli(&url, &["streams"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("account-1") && out.contains("order-1") && out.contains("2 stream(s)"),
        "{out}"
    );
    let (code, out, _) = cli(&url, &["info", "account-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("revision        1"), "{out}");
    let (code, _, err) = cli(&url, &["info", "nobody-1"]);
    assert_eq!(code, 4, "{err}");
    // Reading a stream that is not there says so, as info does; an empty page of one that
    // is there does not.
    let (code, _, err) = cli(&url, &["read", "nobody-1"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("stream 'nobody-1' has no event"), "{err}");
    let (code, _, err) = cli(&url, &["read", "account-1", "--from", "100"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no events"), "{err}");
    // A server URL that names no server is a usage error, not an unreachable server.
    let port = url.rsplit(':').next().unwrap().to_string();
    for (bad, says) in [
        (
            format!("127.0.0.1:{port}"),
            "has no scheme; write http://127.0.0.1:",
        ),
        (
            "http://127.0.0.1:99999".to_string(),
            "a port is a number from 1 to 65535",
        ),
        ("ftp://127.0.0.1:1".to_string(), "has the scheme 'ftp'"),
    ] {
        let (code, _, err) = cli(&bad, &["info"]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
    let (code, out, _) = cli(&url, &["info", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"head\":3"), "{out}");

    // tail follows: history from the start, then a live event.
    let mut tail = Command::new(ANNAL)
        .args(["tail", "--from", "start", "--json", "--server", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    for want in 0..4 {
        let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(v["position"], want);
    }
    cli(&url, &["append", "late-1", "--type", "Late"]);
    let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (v["position"].as_u64(), v["event_type"].as_str()),
        (Some(4), Some("Late"))
    );
    tail.kill().unwrap();
    tail.wait().unwrap();

    // The audit trail: one transaction across streams, one actor's events in a time range.
    let txn = "0195f3a4-0000-7000-8000-00000000c0de";
    for stream in ["order-9", "account-9"] {
        let (code, _, err) = cli(
            &url,
            &[
                "append",
                stream,
                "--type",
                "Paid",
                "--correlation-id",
                txn,
                "--actor",
                "clerk",
            ],
        );
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, _) = cli(&url, &["read", "--correlation", txn]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].contains("order-9@0") && lines[1].contains("account-9@0"),
        "{out}"
    );
    let (code, out, _) = cli(&url, &["read", "--actor", "teller", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (_, out, _) = cli(
        &url,
        &[
            "read",
            "--actor",
            "clerk",
            "--since",
            "2000-01-01T00:00:00Z",
            "--until",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    for range in [
        ["--since", "2999-01-01T00:00:00Z"],
        ["--until", "2000-01-01T00:00:00Z"],
    ] {
        let (code, out, err) = cli(&url, &["read", "--actor", "clerk", range[0], range[1]]);
        assert_eq!((code, out.as_str()), (0, ""), "{range:?}: {err}");
    }
    // Snapshots: none yet, then kept through the API, shown and deleted.
    let (code, _, err) = cli(&url, &["snapshot", "account-1"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("stream 'account-1' has no snapshot"), "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = annal_client::Client::builder(url.clone())
            .connect()
            .await
            .unwrap();
        let state = br#"{"balance":5}"#.to_vec();
        client
            .put_snapshot(annal_core::NewSnapshot::new("account-1", 1, 2, state))
            .await
            .unwrap();
    });
    let (code, out, err) = cli(&url, &["snapshot", "account-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revision        1"), "{out}");
    assert!(out.contains("schema version  2"), "{out}");
    assert!(out.contains(r#"data            {"balance":5}"#), "{out}");
    let (code, out, _) = cli(&url, &["snapshot", "account-1", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["revision"].as_u64(), v["data"]["balance"].as_u64()),
        (Some(1), Some(5))
    );
    let (code, _, err) = cli(&url, &["snapshot", "account-1", "--at", "0"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("at or before revision 0"), "{err}");
    let (code, out, _) = cli(&url, &["snapshot", "account-1", "--delete"]);
    assert_eq!(
        (code, out.trim()),
        (0, "deleted 1 snapshot(s) of account-1")
    );
    let (code, _, _) = cli(&url, &["snapshot", "account-1"]);
    assert_eq!(code, 4);

    let (code, _, err) = cli(&url, &["read", "--correlation", "not-a-uuid"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--correlation 'not-a-uuid' is not a UUID"),
        "{err}"
    );

    signal(&s.child, "-TERM");
    let (status, log) = s.wait();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("stopped cleanly"), "{log}");

    // A server that is not there exits 5.
    let (code, _, err) = cli(&url, &["read", "account-1"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

/// What one writer task learned: ids of acknowledged requests, and of requests whose outcome
/// it never heard (the server died while they were in flight).
#[derive(Default)]
struct Ledger {
    acked: Vec<Vec<Uuid>>,
    unknown: Vec<(String, Vec<NewEvent>)>,
}

/// A ledger the writers share, and a signal for each acknowledged append.
type Book = Arc<(Mutex<Ledger>, Condvar)>;

/// Waits until the writers have had `n` appends acknowledged.
fn wait_acked(book: &Book, n: usize) {
    let (ledger, acked) = &**book;
    let (_ledger, waited) = acked
        .wait_timeout_while(ledger.lock().unwrap(), Duration::from_secs(30), |l| {
            l.acked.len() < n
        })
        .unwrap();
    assert!(
        !waited.timed_out(),
        "fewer than {n} appends were acknowledged"
    );
}

async fn write_until_killed(url: String, writer: usize, book: Book) {
    let (ledger, acked) = &*book;
    let Ok(client) = Client::connect(url).await else {
        return;
    };
    for i in 0.. {
        // Alternate single events and batches of 5, to check atomicity too.
        let n = if i % 2 == 0 { 1 } else { 5 };
        let events: Vec<NewEvent> = (0..n)
            .map(|k| NewEvent::new("Wrote", format!("{{\"w\":{writer},\"i\":{i},\"k\":{k}}}")))
            .collect();
        let stream = format!("w{writer}-{}", i % 3);
        let request = AppendRequest::stream(stream.clone(), ExpectedRevision::Any, events.clone());
        match client.append(request).await {
            Ok(_) => {
                ledger
                    .lock()
                    .unwrap()
                    .acked
                    .push(events.iter().map(|e| e.id).collect());
                acked.notify_all();
            }
            Err(_) => {
                ledger.lock().unwrap().unknown.push((stream, events));
                return;
            }
        }
    }
}

fn check_log(events: &[annal_core::RecordedEvent], acked: &[Vec<Uuid>]) -> HashMap<Uuid, usize> {
    let mut count: HashMap<Uuid, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64, "positions are gapless");
        *count.entry(e.id).or_default() += 1;
    }
    for (id, n) in &count {
        assert_eq!(*n, 1, "event {id} is in the log {n} times");
    }
    for batch in acked {
        for id in batch {
            assert!(count.contains_key(id), "acknowledged event {id} was lost");
        }
    }
    count
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_event_and_writes_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut all_acked: Vec<Vec<Uuid>> = Vec::new();
    for round in 0..4u64 {
        let mut s = serve(&["--data", &data, "--listen", "127.0.0.1:0"], &[]);
        let book: Book = Arc::default();
        let tasks: Vec<_> = (0..8)
            .map(|w| rt.spawn(write_until_killed(s.url.clone(), w, book.clone())))
            .collect();
        // Killed at a different point of the load each round.
        wait_acked(&book, 100 * (round as usize + 1));
        s.child.kill().unwrap(); // SIGKILL
        s.child.wait().unwrap();
        rt.block_on(async {
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(20), t)
                    .await
                    .expect("writers notice the dead server")
                    .unwrap();
            }
        });
        let ledger = std::mem::take(&mut *book.0.lock().unwrap());
        assert!(
            !ledger.acked.is_empty(),
            "round {round}: some appends were acknowledged"
        );
        eprintln!(
            "round {round}: {} appends acknowledged, {} in flight at the kill",
            ledger.acked.len(),
            ledger.unknown.len()
        );
        all_acked.extend(ledger.acked);

        // Restart on the same folder and check everything, then retry what was in doubt.
        let mut s = serve(&["--data", &data, "--listen", "127.0.0.1:0"], &[]);
        rt.block_on(async {
            let client = Client::connect(s.url.clone()).await.unwrap();
            let events = client.read_to_vec(ReadRequest::all()).await.unwrap();
            let present = check_log(&events, &all_acked);
            for (stream, batch) in &ledger.unknown {
                // A batch is all there or not at all.
                let there = batch.iter().filter(|e| present.contains_key(&e.id)).count();
                assert!(
                    there == 0 || there == batch.len(),
                    "half a batch: {there} of {}",
                    batch.len()
                );
                // Retrying with the same ids is safe either way.
                let ids = batch.iter().map(|e| e.id).collect();
                client
                    .append(AppendRequest::stream(
                        stream.clone(),
                        ExpectedRevision::Any,
                        batch.clone(),
                    ))
                    .await
                    .unwrap();
                all_acked.push(ids);
            }
            let events = client.read_to_vec(ReadRequest::all()).await.unwrap();
            check_log(&events, &all_acked);
        });
        signal(&s.child, "-TERM");
        assert!(s.child.wait().unwrap().success());
    }
    // The store is sound on disk too.
    let out = Command::new(ANNAL).args(["check", &data]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn sigterm_stops_cleanly_after_answering_appends_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let s = serve(&["--data", &data, "--listen", "127.0.0.1:0"], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let book: Book = Arc::default();
    let tasks: Vec<_> = (0..8)
        .map(|w| rt.spawn(write_until_killed(s.url.clone(), w, book.clone())))
        .collect();
    // Stopped while every writer is appending.
    wait_acked(&book, 200);
    let stopping = Instant::now();
    signal(&s.child, "-TERM");
    let (status, log) = s.wait();
    assert!(status.success(), "{status:?}: {log}");
    assert!(stopping.elapsed() < Duration::from_secs(20));
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let acked = std::mem::take(&mut book.0.lock().unwrap().acked);
    assert!(!acked.is_empty());
    // Closed cleanly: the store opens with nothing to replay, every acknowledged event there.
    let store = annal_engine::Store::open(Path::new(&data)).unwrap();
    let events: Vec<_> = store
        .read_iter(ReadRequest::all())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    check_log(&events, &acked);
    let unique: HashSet<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(unique.len(), events.len());
    assert!(log.contains("stopped cleanly"), "{log}");
}

/// Starts a read far larger than the socket buffers whose answer is never read: the server
/// cannot finish it, so a graceful stop has to wait for it. Returns once the answer has
/// begun (its status line arrived), with the connection that holds it.
fn stall_a_read(s: &Served, rt: &tokio::runtime::Runtime) -> tokio::net::TcpStream {
    let addr = s.url.trim_start_matches("http://").to_string();
    rt.block_on(async {
        let client = Client::connect(s.url.clone()).await.unwrap();
        for b in 0..40 {
            let events = (0..500)
                .map(|i| {
                    NewEvent::new(
                        "Big",
                        format!("{{\"pad\":\"{}\",\"i\":{i}}}", "x".repeat(400)),
                    )
                })
                .collect();
            client
                .append(AppendRequest::stream(
                    format!("big-{b}"),
                    ExpectedRevision::Any,
                    events,
                ))
                .await
                .unwrap();
        }
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /v1/events?limit=20000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut status = [0u8; 12];
        tcp.read_exact(&mut status).await.unwrap();
        assert_eq!(&status, b"HTTP/1.1 200");
        tcp
    })
}

#[test]
fn the_first_signal_waits_for_a_request_in_flight_up_to_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let s = serve(
        &[
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "1s",
        ],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _stalled = stall_a_read(&s, &rt);
    signal(&s.child, "-TERM");
    // It waited for the stalled read for the whole grace period, then closed it and the
    // store, and exited cleanly.
    s.wait_for_log("requests still open after the grace period");
    let (status, log) = s.wait();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    let store = annal_engine::Store::open(Path::new(&data)).unwrap();
    assert_eq!(store.read_iter(ReadRequest::all()).unwrap().count(), 20_000);
}

#[test]
fn a_second_signal_exits_at_once_while_the_first_waits_for_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let s = serve(
        &[
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "60s",
        ],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _stalled = stall_a_read(&s, &rt);
    signal(&s.child, "-TERM");
    s.wait_for_log("waiting for requests in flight");
    let second = Instant::now();
    signal(&s.child, "-TERM");
    let (status, log) = s.wait();
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "the second signal exits at once"
    );
    assert_eq!(status.code(), Some(130), "{status:?}: {log}");
    assert!(log.contains("second signal"), "{log}");
    // Acknowledged appends are durable whatever the stop: all 20,000 are there.
    let store = annal_engine::Store::open(Path::new(&data)).unwrap();
    assert_eq!(store.read_iter(ReadRequest::all()).unwrap().count(), 20_000);
}

/// The resident memory of a process, and its peak, in MiB.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mib = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            / 1024
    };
    (mib("VmRSS:"), mib("VmHWM:"))
}

/// 64 clients with 4 appends of 1 MiB in flight each (256 MiB offered at once, as much as
/// the default budget, 512 MiB in all) against a server of its own: the peak resident
/// memory above the idle process stays within 1.5 times the in-flight budget, and the
/// memory goes back once the flood is over.
fn flood(framed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(
        &[
            "--data",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let budget = annal_server::Limits::default().max_inflight_append_bytes as u64 >> 20;
    let (idle, _) = memory_of(s.child.id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..64 {
            let client = Client::builder(s.url.clone())
                .framed(framed)
                .connect()
                .await
                .unwrap();
            let client = Arc::new(client);
            for k in 0..4 {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..2 {
                        let e = NewEvent::new("Big", vec![b'x'; 1 << 20])
                            .with_content_type("application/octet-stream");
                        let request = AppendRequest::stream(
                            format!("f-{c}-{k}-{i}"),
                            ExpectedRevision::Any,
                            vec![e],
                        );
                        EventStore::append(&*client, request).await.unwrap();
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (_, peak) = memory_of(s.child.id());
    // Once the flood is answered, its memory goes back to the system.
    let started = Instant::now();
    let after = loop {
        let (now, _) = memory_of(s.child.id());
        if now - idle <= budget / 4 || started.elapsed() > Duration::from_secs(10) {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "{} flood: idle {idle} MiB, peak {peak} MiB, after {after} MiB, budget {budget} MiB",
        if framed { "framed" } else { "gRPC" }
    );
    assert!(
        peak - idle <= budget * 3 / 2,
        "peak {peak} MiB, idle {idle} MiB, budget {budget} MiB"
    );
    assert!(
        after - idle <= budget / 4,
        "{after} MiB held after the flood, idle {idle} MiB, budget {budget} MiB"
    );
    signal(&s.child, "-TERM");
    let (status, log) = s.wait();
    assert!(status.success(), "{log}");
}

/// One flood after the other: each server is measured under its own clients only, not
/// beside another flood competing for the same cores.
#[test]
fn floods_of_large_appends_stay_within_the_in_flight_budget() {
    flood(true);
    flood(false);
}

#[test]
fn the_group_commands_create_show_list_and_delete_and_groups_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--data",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let mut s = serve(&args, &[]);
    let url = s.url.clone();
    let (code, out, err) = cli(
        &url,
        &[
            "group",
            "create",
            "videos",
            "--category",
            "video",
            "--max-attempts",
            "2",
            "--ack-timeout",
            "5s",
            "--on-park",
            "skip",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("group        videos"), "{out}");
    assert!(
        out.contains(r#""max_attempts":2"#) && out.contains(r#""ack_timeout_ms":5000"#),
        "{out}"
    );
    let (code, out, err) = cli(&url, &["groups"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(1).unwrap().starts_with("videos"), "{out}");
    let (code, out, _) = cli(&url, &["group", "parked", "videos"]);
    assert_eq!((code, out.trim()), (0, "no parked events"));
    let (code, out, _) = cli(&url, &["group", "show", "videos", "--json"]);
    assert_eq!(code, 0);
    let g: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(g["definition"]["source"]["category"], "video");

    // Bad input and unknown groups exit 2 and 4, naming the problem.
    let (code, _, err) = cli(&url, &["group", "create", "bad name"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("group name"), "{err}");
    let (code, _, err) = cli(&url, &["group", "create", "g", "--on-park", "later"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--on-park 'later'"), "{err}");
    let (code, _, err) = cli(&url, &["group", "show", "nope"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("consumer group 'nope'"), "{err}");
    let (code, _, err) = cli(
        &url,
        &["group", "replay-parked", "videos", "--position", "3"],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("parked event at position 3"), "{err}");

    // A group acknowledged is durable: it is there after a SIGKILL.
    s.child.kill().unwrap();
    s.wait();
    let s = serve(&args, &[]);
    let url = s.url.clone();
    let (code, out, err) = cli(&url, &["group", "show", "videos"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""on_park":"skip""#), "{out}");
    let (code, out, err) = cli(&url, &["group", "change", "videos", "--max-in-flight", "9"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""max_in_flight":9"#), "{out}");
    let (code, out, err) = cli(&url, &["group", "delete", "videos"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted consumer group videos"), "{out}");
    let (code, out, _) = cli(&url, &["groups"]);
    assert_eq!((code, out.trim()), (0, "no consumer groups"));
    signal(&s.child, "-TERM");
    s.wait();
}

/// The video lifecycle, in the order each video's events are appended.
const LIFECYCLE: [&str; 4] = ["Uploaded", "ProcessingStarted", "Progress", "Completed"];

/// One handling of an event by a member: from its delivery to the moment its ack was sent
/// (or the member crashed or lost its membership).
#[derive(Debug, Clone)]
struct Span {
    member: String,
    revision: u64,
    began: Instant,
    ended: Instant,
}

/// What the members did: each video's applied lifecycle, every span per video, and any
/// event handled before an earlier one of its video.
#[derive(Default)]
struct VideoBook {
    applied: HashMap<String, Vec<u64>>,
    spans: HashMap<String, Vec<Span>>,
    out_of_order: Vec<String>,
    acked: usize,
}

/// A member's deliveries being handled, by position: the video, its revision, and when
/// the handling began.
type Held = HashMap<u64, (String, u64, Instant)>;

/// A cheap deterministic generator.
fn next_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// A member that keeps rejoining: handles deliveries concurrently with random delays,
/// applies each video's events idempotently (a redelivered one has no second effect),
/// crashes now and then (abandons what it holds without acking), and rides out a server
/// restart by joining again at the server's new address.
async fn video_member(
    id: usize,
    url: Arc<Mutex<String>>,
    book: Arc<Mutex<VideoBook>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (id as u64 + 1);
    let mut incarnation = 0;
    while !stop.load(Ordering::Relaxed) {
        incarnation += 1;
        let name = format!("m{id}.{incarnation}");
        let current = url.lock().unwrap().clone();
        let Ok(client) = Client::connect(current).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(mut member) = client.join_group("videos", &name).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut handlers = tokio::task::JoinSet::new();
        let open: Arc<Mutex<Held>> = Arc::default();
        let ended = loop {
            let next = tokio::time::timeout(Duration::from_millis(200), member.next()).await;
            let d = match next {
                Err(_) if stop.load(Ordering::Relaxed) => break "stopped",
                Err(_) => continue,
                Ok(Some(Ok(d))) => d,
                Ok(_) => break "lost its membership",
            };
            let stream = d.event.stream_id.to_string();
            let revision = d.event.revision;
            let began = Instant::now();
            open.lock()
                .unwrap()
                .insert(d.position, (stream.clone(), revision, began));
            let delay = next_random(&mut seed) % 3;
            let crash = next_random(&mut seed).is_multiple_of(1500);
            let (book, open, name) = (Arc::clone(&book), Arc::clone(&open), name.clone());
            handlers.spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                // A crash may have taken this delivery back already (the handler runs on
                // another thread while it is aborted): then it has no effect.
                if open.lock().unwrap().remove(&d.position).is_none() {
                    return;
                }
                {
                    let b = &mut *book.lock().unwrap();
                    let applied = b.applied.entry(stream.clone()).or_default();
                    if !applied.contains(&revision) {
                        if applied.len() as u64 != revision {
                            b.out_of_order
                                .push(format!("{stream} revision {revision} after {applied:?}"));
                        }
                        applied.push(revision);
                    }
                }
                let ended = Instant::now();
                let span = Span {
                    member: name,
                    revision,
                    began,
                    ended,
                };
                book.lock()
                    .unwrap()
                    .spans
                    .entry(stream)
                    .or_default()
                    .push(span);
                if d.ack().await.is_ok() {
                    book.lock().unwrap().acked += 1;
                }
            });
            if crash {
                break "crashed";
            }
        };
        // Whatever it holds is abandoned: its spans end now, before the connection goes.
        handlers.abort_all();
        let now = Instant::now();
        {
            let mut b = book.lock().unwrap();
            for (_, (stream, revision, began)) in open.lock().unwrap().drain() {
                b.spans.entry(stream).or_default().push(Span {
                    member: name.clone(),
                    revision,
                    began,
                    ended: now,
                });
            }
        }
        drop(member);
        if ended != "stopped" {
            tokio::time::sleep(Duration::from_millis(next_random(&mut seed) % 50)).await;
        }
    }
}

/// The field's race made real: members process 10,000 videos' lifecycles with random
/// delays and crashes, and the server is killed with SIGKILL halfway; every video ends
/// completed with its events applied in order, and no two members ever held a video at
/// once.
#[test]
fn ten_thousand_videos_through_crashing_members_and_a_killed_server() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const VIDEOS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--data",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let mut s = serve(&args, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = Arc::new(Mutex::new(s.url.clone()));
    let book: Arc<Mutex<VideoBook>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let members = rt.block_on(async {
        let c = Client::connect(s.url.clone()).await.unwrap();
        let def = serde_json::json!({
            "name": "videos",
            "source": {"category": "video"},
            "settings": {"member_timeout_ms": 2000, "ack_timeout_ms": 5000, "retry_backoff_ms": 10}
        });
        c.group_call(
            annal_client::GroupCall::Create,
            annal_client::GroupArgs {
                json: def.to_string(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut members = Vec::new();
        for id in 0..3 {
            members.push(tokio::spawn(video_member(
                id,
                Arc::clone(&url),
                Arc::clone(&book),
                Arc::clone(&stop),
            )));
        }
        // Each video's whole lifecycle at once, so that its events wait side by side in
        // the group's window: 250 videos an append.
        for chunk in (0..VIDEOS).collect::<Vec<_>>().chunks(250) {
            let mut request = AppendRequest::default();
            for v in chunk {
                let events = LIFECYCLE.iter().map(|t| NewEvent::new(*t, "{}")).collect();
                request = request.and(annal_core::StreamAppend::new(
                    format!("video-{v}"),
                    ExpectedRevision::Any,
                    events,
                ));
            }
            c.append(request).await.unwrap();
        }
        members
    });
    let total = VIDEOS * LIFECYCLE.len();
    let wait_acked = |n: usize, limit: Duration| {
        let started = Instant::now();
        while book.lock().unwrap().acked < n {
            assert!(
                started.elapsed() < limit,
                "only {} of {n} acknowledged",
                book.lock().unwrap().acked
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_acked(total / 2, Duration::from_secs(300));
    s.child.kill().unwrap(); // SIGKILL, halfway
    s.wait();
    let s = serve(&args, &[]);
    *url.lock().unwrap() = s.url.clone();
    let started = Instant::now();
    loop {
        let done = {
            let b = book.lock().unwrap();
            b.applied.len() == VIDEOS && b.applied.values().all(|a| a.len() == LIFECYCLE.len())
        };
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the videos did not all complete"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for m in members {
            m.await.unwrap();
        }
    });
    let book = book.lock().unwrap();
    assert!(
        book.out_of_order.is_empty(),
        "handled out of order: {:?}",
        &book.out_of_order[..book.out_of_order.len().min(5)]
    );
    for (video, applied) in &book.applied {
        assert_eq!(applied, &vec![0, 1, 2, 3], "{video}");
    }
    let mut handled = 0;
    for (video, spans) in &book.spans {
        let mut spans = spans.clone();
        spans.sort_by_key(|s| s.began);
        handled += spans.len();
        for w in spans.windows(2) {
            assert!(
                w[1].began >= w[0].ended,
                "{video}: {} took revision {} before {} let go of revision {}",
                w[1].member,
                w[1].revision,
                w[0].member,
                w[0].revision
            );
        }
    }
    assert!(handled >= total, "{handled} handlings of {total} events");
    // The group's own state agrees: everything settled, nothing parked.
    let (code, out, err) = cli(&s.url, &["group", "show", "videos", "--json"]);
    assert_eq!(code, 0, "{err}");
    let g: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(g["parked"], 0, "{g}");
    assert_eq!(g["floor"].as_u64(), Some(total as u64), "{g}");
    eprintln!(
        "{total} events, {handled} handlings ({} redelivered or abandoned), members crashed and rejoined, server killed once",
        handled - total
    );
}
