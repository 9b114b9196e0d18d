//! Keeps plugin errors in the log readable: the first few occurrences of an
//! error in each interval are logged, the rest counted and summed up once the
//! interval ends; a traceback is logged once per distinct error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Occurrences of one error logged in full per interval.
pub const LOGGED_PER_INTERVAL: u32 = 3;
/// How long an interval lasts.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Distinct errors remembered; more are counted together.
const DISTINCT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Log it; with its traceback when this error has not shown one yet.
    Log { traceback: bool },
    /// Count it for the interval's summary.
    Quiet,
}

#[derive(Debug)]
struct Seen {
    since: Instant,
    logged: u32,
    quiet: u64,
    traced: bool,
}

#[derive(Debug, Default)]
pub struct ErrorLog {
    seen: HashMap<String, Seen>,
    /// Errors beyond `DISTINCT` in the current interval.
    overflow: u64,
}

impl ErrorLog {
    /// One occurrence of `error` at `now`.
    pub fn note(&mut self, error: &str, now: Instant) -> Verdict {
        if !self.seen.contains_key(error) && self.seen.len() >= DISTINCT {
            self.overflow += 1;
            return Verdict::Quiet;
        }
        let seen = self.seen.entry(error.to_owned()).or_insert(Seen { since: now, logged: 0, quiet: 0, traced: false });
        if now.duration_since(seen.since) >= INTERVAL && seen.quiet == 0 {
            // A new interval begins with this occurrence.
            (seen.since, seen.logged) = (now, 0);
        }
        if seen.logged < LOGGED_PER_INTERVAL {
            seen.logged += 1;
            Verdict::Log { traceback: !std::mem::replace(&mut seen.traced, true) }
        } else {
            seen.quiet += 1;
            Verdict::Quiet
        }
    }

    /// The errors whose interval has ended with occurrences left unlogged, and
    /// how many: each summed up once. Intervals that ended are closed.
    pub fn summaries(&mut self, now: Instant) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (error, seen) in &mut self.seen {
            if now.duration_since(seen.since) >= INTERVAL && seen.quiet > 0 {
                out.push((error.clone(), std::mem::take(&mut seen.quiet)));
                (seen.since, seen.logged) = (now, 0);
            }
        }
        // Forget errors quiet for a whole interval, keeping whether they showed a traceback
        // only while they are remembered.
        self.seen.retain(|_, s| now.duration_since(s.since) < INTERVAL * 2 || s.quiet > 0);
        if self.overflow > 0 {
            out.push(("other errors".into(), std::mem::take(&mut self.overflow)));
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrences_are_logged_then_counted_and_summed_up() {
        let mut log = ErrorLog::default();
        let t = Instant::now();
        assert_eq!(log.note("boom", t), Verdict::Log { traceback: true });
        assert_eq!(log.note("boom", t), Verdict::Log { traceback: false });
        assert_eq!(log.note("other", t), Verdict::Log { traceback: true });
        assert_eq!(log.note("boom", t), Verdict::Log { traceback: false });
        for _ in 0..10 {
            assert_eq!(log.note("boom", t), Verdict::Quiet);
        }
        assert!(log.summaries(t + INTERVAL / 2).is_empty(), "not before the interval ends");
        assert_eq!(log.summaries(t + INTERVAL), vec![("boom".to_string(), 10)]);
        assert!(log.summaries(t + INTERVAL).is_empty(), "each summed up once");
        // The next interval logs again, without the traceback already shown.
        assert_eq!(log.note("boom", t + INTERVAL), Verdict::Log { traceback: false });
    }

    #[test]
    fn distinct_errors_beyond_the_bound_are_counted_together() {
        let mut log = ErrorLog::default();
        let t = Instant::now();
        for i in 0..DISTINCT + 5 {
            log.note(&format!("error {i}"), t);
        }
        assert_eq!(log.summaries(t + INTERVAL), vec![("other errors".to_string(), 5)]);
    }
}
