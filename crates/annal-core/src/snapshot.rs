//! Snapshots: the state of a stream's aggregate as of one of its revisions, kept by the store
//! beside the log so that a long stream loads from the snapshot and the events after it.
//!
//! A snapshot is a cache: its data is whatever the application encoded, tagged with a schema
//! version of the application's choosing, and it is never an event. Reads and subscriptions
//! never see one, and a store that holds none spends nothing on them.

use bytes::Bytes;

use crate::Timestamp;

/// A store keeps this many snapshots of a stream at most: those of the highest revisions.
/// A put beyond it drops the snapshot of the lowest revision.
pub const SNAPSHOTS_PER_STREAM: usize = 8;

/// A snapshot to keep: a stream's state as of `revision`, encoded by the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    pub stream_id: String,
    /// The revision of the last event the state folds in; the stream must have reached it.
    pub revision: u64,
    /// The version of the state's encoding, so that a reader can tell a snapshot it cannot
    /// decode from one it can.
    pub schema_version: u32,
    pub data: Bytes,
}

impl NewSnapshot {
    pub fn new(
        stream_id: impl Into<String>,
        revision: u64,
        schema_version: u32,
        data: impl Into<Bytes>,
    ) -> Self {
        NewSnapshot {
            stream_id: stream_id.into(),
            revision,
            schema_version,
            data: data.into(),
        }
    }
}

/// A snapshot as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub stream_id: String,
    pub revision: u64,
    pub schema_version: u32,
    pub data: Bytes,
    /// When the store took it.
    pub taken_at: Timestamp,
}

/// Keeps `list` (sorted by revision) at most [`SNAPSHOTS_PER_STREAM`] long after `new` is
/// placed, replacing one of the same revision; returns the snapshots it dropped. Every
/// backend keeps the same ones through this.
pub fn keep_snapshot<T>(list: &mut Vec<T>, new: T, revision: impl Fn(&T) -> u64) -> Vec<T> {
    let r = revision(&new);
    let mut dropped = Vec::new();
    match list.binary_search_by_key(&r, &revision) {
        Ok(i) => dropped.push(std::mem::replace(&mut list[i], new)),
        Err(i) => list.insert(i, new),
    }
    let over = list.len().saturating_sub(SNAPSHOTS_PER_STREAM);
    dropped.extend(list.drain(..over));
    dropped
}

/// The latest of `list` (sorted by revision) at or before `at_or_before` (`None`: the latest).
pub fn latest_snapshot<T>(
    list: &[T],
    at_or_before: Option<u64>,
    revision: impl Fn(&T) -> u64,
) -> Option<&T> {
    match at_or_before {
        None => list.last(),
        Some(r) => {
            let n = list.partition_point(|s| revision(s) <= r);
            n.checked_sub(1).map(|i| &list[i])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest_revisions_and_replaces_one_of_the_same_revision() {
        let mut list = Vec::new();
        for r in [5u64, 1, 9, 3, 7, 11, 13, 15, 2] {
            keep_snapshot(&mut list, (r, 0), |s| s.0);
        }
        // Nine snapshots, eight kept: the lowest revision (1) went.
        assert_eq!(
            list.iter().map(|s| s.0).collect::<Vec<_>>(),
            [2, 3, 5, 7, 9, 11, 13, 15]
        );
        let dropped = keep_snapshot(&mut list, (7, 1), |s| s.0);
        assert_eq!(dropped, [(7, 0)]);
        assert_eq!(list[3], (7, 1));
        // Lower than every kept one: dropped at once.
        assert_eq!(keep_snapshot(&mut list, (0, 0), |s| s.0), [(0, 0)]);
        assert_eq!(latest_snapshot(&list, None, |s| s.0), Some(&(15, 0)));
        assert_eq!(latest_snapshot(&list, Some(8), |s| s.0), Some(&(7, 1)));
        assert_eq!(latest_snapshot(&list, Some(7), |s| s.0), Some(&(7, 1)));
        assert_eq!(latest_snapshot(&list, Some(1), |s| s.0), None);
    }
}
