//! Warnings that repeat, said at most once per period with the count of those held back: a
//! flood of refused requests or connections, or a broker that stays away, must not flood the
//! log too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Warnings said at most once per `period` each, told apart by a key.
pub struct Quieted {
    period: Duration,
    /// Per key: when it was last said, and how many were held back since.
    state: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Quieted {
    /// Each warning at most once per `period`.
    pub fn new(period: Duration) -> Self {
        Quieted {
            period,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// [`Quieted::warn_about`] for a warning of one kind only.
    pub fn warn(&self, say: impl FnOnce(u64)) {
        self.warn_about("", say);
    }

    /// Calls `say` with the number of warnings of this `key` held back since it was last said,
    /// unless that was within the period: then this one is held back and counted. Keys should
    /// be few (an error's kind, not a record id).
    pub fn warn_about(&self, key: &str, say: impl FnOnce(u64)) {
        let now = Instant::now();
        let suppressed = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match state.get_mut(key) {
                Some((last, held_back)) if now.duration_since(*last) < self.period => {
                    *held_back += 1;
                    return;
                }
                Some((last, held_back)) => {
                    *last = now;
                    std::mem::take(held_back)
                }
                None => {
                    state.insert(key.to_owned(), (now, 0));
                    0
                }
            }
        };
        say(suppressed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_said_once_per_period_with_the_count_held_back() {
        let quieted = Quieted::new(Duration::from_secs(3600));
        let mut said = Vec::new();
        for _ in 0..5 {
            quieted.warn(|suppressed| said.push(("", suppressed)));
        }
        // Another key is another warning.
        for _ in 0..3 {
            quieted.warn_about("other", |suppressed| said.push(("other", suppressed)));
        }
        assert_eq!(said, vec![("", 0), ("other", 0)]);
        // A period of zero lets every one through, with what was held back before.
        let open = Quieted::new(Duration::ZERO);
        open.state
            .lock()
            .unwrap()
            .insert("x".to_owned(), (Instant::now(), 4));
        open.warn_about("x", |suppressed| said.push(("x", suppressed)));
        assert_eq!(said, vec![("", 0), ("other", 0), ("x", 4)]);
    }
}
