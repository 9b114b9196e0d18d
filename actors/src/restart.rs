//! When a failed plugin is started again: after an exponential backoff, and
//! not at all after more than `max_restarts` restarts within `window`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What to do about a plugin's failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Start a fresh instance after this delay.
    RetryAfter(Duration),
    /// Too many restarts in the window: the plugin is failed.
    GiveUp {
        /// Restarts counted in the window, this one included.
        restarts: usize,
        /// The window they fell in.
        window: Duration,
    },
}

/// The restart policy of one plugin: backoff, window and limit, with the restarts it has seen.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    max_restarts: u32,
    window: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    /// When the restarts still inside the window happened.
    recent: VecDeque<Instant>,
}

impl RestartPolicy {
    /// No restarts seen yet.
    pub fn new(max_restarts: u32, window: Duration, backoff_initial: Duration, backoff_max: Duration) -> Self {
        RestartPolicy { max_restarts, window, backoff_initial, backoff_max, recent: VecDeque::new() }
    }

    /// The backoff before the restart just recorded: `backoff_initial`, doubling
    /// with each restart in the window, at most `backoff_max`.
    fn backoff(&self) -> Duration {
        let n = self.recent.len().saturating_sub(1).min(16) as u32;
        (self.backoff_initial * 2u32.pow(n)).min(self.backoff_max)
    }

    /// Record a failure at `now`: what to do about it.
    pub fn failed(&mut self, now: Instant) -> Verdict {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > self.max_restarts as usize {
            Verdict::GiveUp { restarts: self.recent.len(), window: self.window }
        } else {
            Verdict::RetryAfter(self.backoff())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> RestartPolicy {
        RestartPolicy::new(3, 1000 * MS, 100 * MS, 350 * MS)
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let mut p = policy();
        let t = Instant::now();
        assert_eq!(p.failed(t), Verdict::RetryAfter(100 * MS));
        assert_eq!(p.failed(t + MS), Verdict::RetryAfter(200 * MS));
        assert_eq!(p.failed(t + 2 * MS), Verdict::RetryAfter(350 * MS));
    }

    #[test]
    fn more_than_max_restarts_within_the_window_gives_up() {
        let mut p = policy();
        let t = Instant::now();
        for i in 0..3 {
            assert!(matches!(p.failed(t + i * 10 * MS), Verdict::RetryAfter(_)));
        }
        assert_eq!(p.failed(t + 30 * MS), Verdict::GiveUp { restarts: 4, window: 1000 * MS });
    }

    #[test]
    fn restarts_outside_the_window_are_forgotten() {
        let mut p = policy();
        let t = Instant::now();
        for i in 0..3 {
            p.failed(t + i * 400 * MS);
        }
        // At 1300 ms the first (0 ms) has left the window: three in it, not four.
        assert_eq!(p.failed(t + 1300 * MS), Verdict::RetryAfter(350 * MS));
        // Long after, the backoff starts over.
        assert_eq!(p.failed(t + 10_000 * MS), Verdict::RetryAfter(100 * MS));
    }
}
