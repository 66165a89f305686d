//! Small measuring helpers.

use std::time::Duration;

/// The p-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Resident memory of a process, from /proc (Linux); `None` elsewhere.
pub fn resident_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A JSON payload of about 250 bytes, different for every `i`.
pub fn payload(i: u64) -> Vec<u8> {
    use std::io::Write;
    // Built in one buffer: the clients of both stores call this for every event they send,
    // so its cost is part of every client-side figure.
    let mut s = Vec::with_capacity(256);
    let _ = write!(
        s,
        "{{\"account\":\"acc-{:08}\",\"amount\":{},\"currency\":\"EUR\",\"reference\":\"invoice {} for services rendered\",\"note\":\"",
        i % 100_000,
        (i * 7919) % 100_000,
        i
    );
    let pad = 246usize.saturating_sub(s.len());
    s.resize(s.len() + pad, b'x');
    s.extend_from_slice(b"\"}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_json_of_about_250_bytes() {
        for i in [0, 1, 99_999, 12_345_678_901] {
            let p = payload(i);
            assert!((240..=260).contains(&p.len()), "{}", p.len());
            let text = String::from_utf8(p).unwrap();
            assert!(text.starts_with('{') && text.ends_with("\"}"));
            let note = "for services rendered\",\"note\":\"";
            let pad = &text[text.find(note).unwrap() + note.len()..text.len() - 2];
            assert!(!pad.is_empty() && pad.bytes().all(|b| b == b'x'), "{text}");
            assert!(text.len() >= 248, "{text}");
        }
    }

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 0.0), Duration::from_millis(1));
    }
}
