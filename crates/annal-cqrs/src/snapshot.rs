//! Snapshot policy: when a handler keeps a snapshot of an aggregate in the store, and how its
//! state is encoded. Loading starts from the latest usable snapshot and replays only the
//! events after it (`load.rs`).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How instances of an aggregate are snapshotted: the state's encoding, its schema version,
/// and when to take one. An aggregate opts in through [`Decider::snapshots`](crate::Decider::snapshots).
///
/// A snapshot of another schema version than this one is passed over (the aggregate replays
/// from an older usable snapshot, or from the start), and so is one that fails to decode,
/// with a warning: a snapshot is a cache, never the truth.
pub struct Snapshotting<S> {
    /// The version of the state's encoding; change it whenever the encoding changes.
    pub schema_version: u32,
    /// Take one whenever a command takes the stream past a multiple of this many events.
    pub every: Option<u64>,
    /// Take one whenever a load replayed more than this many events.
    pub after_replaying: Option<u64>,
    encode: fn(&S) -> Result<Vec<u8>, String>,
    decode: fn(&[u8]) -> Result<S, String>,
}

impl<S> Clone for Snapshotting<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Snapshotting<S> {}

impl<S> std::fmt::Debug for Snapshotting<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotting")
            .field("schema_version", &self.schema_version)
            .field("every", &self.every)
            .field("after_replaying", &self.after_replaying)
            .finish_non_exhaustive()
    }
}

impl<S: Serialize + DeserializeOwned> Snapshotting<S> {
    /// The state as JSON, through serde, at `schema_version`; no snapshot is taken until a
    /// policy ([`every`](Self::every), [`after_replaying`](Self::after_replaying)) says when.
    pub fn json(schema_version: u32) -> Self {
        Snapshotting {
            schema_version,
            every: None,
            after_replaying: None,
            encode: |s| serde_json::to_vec(s).map_err(|e| e.to_string()),
            decode: |b| serde_json::from_slice(b).map_err(|e| e.to_string()),
        }
    }
}

impl<S> Snapshotting<S> {
    /// The state in an encoding of the application's own.
    pub fn with_codec(
        schema_version: u32,
        encode: fn(&S) -> Result<Vec<u8>, String>,
        decode: fn(&[u8]) -> Result<S, String>,
    ) -> Self {
        Snapshotting {
            schema_version,
            every: None,
            after_replaying: None,
            encode,
            decode,
        }
    }

    /// Takes a snapshot whenever a command takes the stream past a multiple of `n` events.
    pub fn every(mut self, n: u64) -> Self {
        self.every = Some(n.max(1));
        self
    }

    /// Takes a snapshot whenever a load replayed more than `n` events.
    pub fn after_replaying(mut self, n: u64) -> Self {
        self.after_replaying = Some(n);
        self
    }

    pub fn encode(&self, state: &S) -> Result<Vec<u8>, String> {
        (self.encode)(state)
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<S, String> {
        (self.decode)(bytes)
    }

    /// Whether a command that took the stream from revision `before` to `after` is due for
    /// a snapshot by the `every` policy.
    pub fn due_after_command(&self, before: Option<u64>, after: u64) -> bool {
        let Some(n) = self.every else {
            return false;
        };
        let count_before = before.map_or(0, |r| r + 1);
        count_before / n < (after + 1) / n
    }

    /// The fewest events a stream holds once this policy may have taken a snapshot of it;
    /// `None` without a policy.
    pub fn threshold(&self) -> Option<u64> {
        let after = self.after_replaying.map(|n| n.saturating_add(1));
        match (self.every, after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a load that replayed `replayed` events is due for a snapshot.
    pub fn due_after_load(&self, replayed: u64) -> bool {
        self.after_replaying.is_some_and(|n| replayed > n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_n_takes_one_each_time_a_multiple_is_passed() {
        let s = Snapshotting::<u32>::json(1).every(10);
        assert!(!s.due_after_command(None, 8), "9 events");
        assert!(s.due_after_command(None, 9), "10 events");
        assert!(s.due_after_command(Some(8), 9));
        assert!(
            !s.due_after_command(Some(9), 10),
            "11 events, 10 already passed"
        );
        assert!(s.due_after_command(Some(17), 25), "a batch across 20");
        assert!(!Snapshotting::<u32>::json(1).due_after_command(None, 100));
        let r = Snapshotting::<u32>::json(1).after_replaying(50);
        assert!(!r.due_after_load(50) && r.due_after_load(51));
        assert_eq!(r.threshold(), Some(51));
        assert_eq!(r.every(20).threshold(), Some(20));
        assert_eq!(s.threshold(), Some(10));
        assert_eq!(Snapshotting::<u32>::json(1).threshold(), None);
    }
}
