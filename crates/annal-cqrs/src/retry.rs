//! How often and how patiently a command is tried again after losing a race.

use std::time::Duration;

/// Bounded attempts with exponential backoff and full jitter: before attempt `n` (from 2),
/// a pause drawn uniformly from zero to `first_pause * 2^(n-2)`, capped at `max_pause`, so
/// that writers that collided do not collide again in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included; at least 1.
    pub attempts: u32,
    pub first_pause: Duration,
    pub max_pause: Duration,
}

impl Retry {
    /// One attempt: a conflict is returned at once.
    pub const NEVER: Retry = Retry {
        attempts: 1,
        first_pause: Duration::ZERO,
        max_pause: Duration::ZERO,
    };

    /// The pause before attempt `attempt` (2 for the first retry).
    pub fn pause(&self, attempt: u32) -> Duration {
        let doubling = attempt.saturating_sub(2).min(30);
        let ceiling = self
            .first_pause
            .saturating_mul(1 << doubling)
            .min(self.max_pause);
        ceiling.mul_f64(fastrand::f64())
    }
}

impl Default for Retry {
    /// Ten attempts; pauses from 2 ms, at most 200 ms.
    fn default() -> Self {
        Retry {
            attempts: 10,
            first_pause: Duration::from_millis(2),
            max_pause: Duration::from_millis(200),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_are_jittered() {
        let r = Retry {
            attempts: 10,
            first_pause: Duration::from_millis(10),
            max_pause: Duration::from_millis(35),
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            assert!(r.pause(2) <= Duration::from_millis(10));
            assert!(r.pause(3) <= Duration::from_millis(20));
            assert!(r.pause(9) <= Duration::from_millis(35));
            seen.insert(r.pause(9));
        }
        assert!(
            seen.len() > 100,
            "pauses are drawn, not fixed: {}",
            seen.len()
        );
        assert_eq!(Retry::NEVER.pause(2), Duration::ZERO);
    }
}
