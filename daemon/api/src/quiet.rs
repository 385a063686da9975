//! Warnings that repeat, said at most once per period with the count of those held back: a
//! flood of refused requests or connections must not flood the log too.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of warning, said at most once per `period`.
pub(crate) struct Quieted {
    period: Duration,
    /// When it was last said, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Quieted {
    pub(crate) fn new(period: Duration) -> Self {
        Quieted {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `say` with the number of occurrences held back since the last time it was said,
    /// unless that was within the period: then this one is held back and counted.
    pub(crate) fn warn(&self, say: impl FnOnce(u64)) {
        let now = Instant::now();
        let suppressed = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (last, held_back) = &mut *state;
            if last.is_some_and(|last| now.duration_since(last) < self.period) {
                *held_back += 1;
                return;
            }
            *last = Some(now);
            std::mem::take(held_back)
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
            quieted.warn(|suppressed| said.push(suppressed));
        }
        assert_eq!(said, vec![0]);
        // A period of zero lets every one through, with what was held back before.
        let open = Quieted::new(Duration::ZERO);
        *open.state.lock().unwrap() = (Some(Instant::now()), 4);
        open.warn(|suppressed| said.push(suppressed));
        assert_eq!(said, vec![0, 4]);
    }
}
