//! A one-line progress bar on stderr for `wait` and `submit --wait`. Drawn only on a terminal (the
//! caller decides), redrawn in place with `\r`, and erased when done so the summary line is clean.

use std::io::{self, Write};
use std::time::{Duration, Instant};

const BAR_WIDTH: usize = 30;

/// The master may send a `Progress` frame every loop turn; a person cannot read faster than this,
/// and a slow terminal should not become the bottleneck.
const MIN_REDRAW: Duration = Duration::from_millis(100);

/// Counts as the bar shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub total: u64,
    pub finished: u64,
    pub failed: u64,
}

pub struct ProgressBar {
    enabled: bool,
    start: Instant,
    last_draw: Option<Instant>,
    /// Tasks already finished at the first update: they do not count towards the rate.
    baseline: Option<u64>,
}

impl ProgressBar {
    pub fn new(enabled: bool, start: Instant) -> Self {
        ProgressBar {
            enabled,
            start,
            last_draw: None,
            baseline: None,
        }
    }

    pub fn update(&mut self, now: Instant, counts: Counts) {
        if !self.enabled {
            return;
        }
        let baseline = *self.baseline.get_or_insert(counts.finished);
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < MIN_REDRAW)
        {
            return;
        }
        self.last_draw = Some(now);
        let line = render(counts, now.duration_since(self.start), baseline);
        // `\x1b[K` erases what a longer previous line left behind. Errors are ignored: a broken
        // stderr must not stop the wait.
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }

    /// Erases the bar, if one was drawn.
    pub fn clear(&mut self) {
        if self.last_draw.take().is_some() {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

impl Drop for ProgressBar {
    /// An error mid-wait still leaves a clean line for its message.
    fn drop(&mut self) {
        self.clear();
    }
}

/// `[###########-------------------]  375/1000  2 failed  41.7/s  0:09  eta 0:15`
/// `already` tasks were finished before the wait began; the rate counts only the rest. The ETA
/// shows once it can be told: a second in, with some task finished since the wait began.
pub fn render(c: Counts, elapsed: Duration, already: u64) -> String {
    let finished = c.finished.min(c.total);
    let filled = if c.total == 0 {
        0
    } else {
        (finished as u128 * BAR_WIDTH as u128 / c.total as u128) as usize
    };
    let bar: String = (0..BAR_WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        finished.saturating_sub(already) as f64 / secs
    } else {
        0.0
    };
    let left = c.total.saturating_sub(finished);
    let eta = (secs >= 1.0 && rate > 0.0 && left > 0)
        .then(|| left as f64 / rate)
        // A wait of years is not an ETA worth a column.
        .filter(|s| *s < 100.0 * 3600.0)
        .map(|s| format!("  eta {}", clock(Duration::from_secs_f64(s.ceil()))))
        .unwrap_or_default();
    let rate = if rate >= 100.0 {
        format!("{rate:.0}/s")
    } else {
        format!("{rate:.1}/s")
    };
    format!(
        "[{bar}]  {finished}/{}  {} failed  {rate}  {}{eta}",
        c.total,
        c.failed,
        clock(elapsed)
    )
}

/// `0:09`, `12:34`, `1:02:03`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bar_counts_rate_and_time() {
        let c = Counts {
            total: 1000,
            finished: 500,
            failed: 2,
        };
        let line = render(c, Duration::from_secs(4), 0);
        assert_eq!(
            line,
            format!(
                "[{}{}]  500/1000  2 failed  125/s  0:04  eta 0:04",
                "#".repeat(15),
                "-".repeat(15)
            )
        );
        assert!(render(c, Duration::from_secs(3723), 0).contains("1:02:03  eta "));
        // 125/s with 500 left: 4 s more.
        assert!(render(c, Duration::from_secs(4), 0).ends_with("0:04  eta 0:04"));
        // Too early to tell, nothing finished yet, or all done: no ETA.
        assert!(!render(c, Duration::from_millis(500), 0).contains("eta"));
        assert!(!render(c, Duration::from_secs(4), 500).contains("eta"));
        let all = Counts {
            total: 3,
            finished: 3,
            failed: 0,
        };
        assert!(!render(all, Duration::from_secs(4), 0).contains("eta"));
        assert!(render(c, Duration::from_secs(100), 0).contains("5.0/s"));
        // 400 were done before the wait began: only 100 in 4 s count.
        assert!(render(c, Duration::from_secs(4), 400).contains("25.0/s"));
    }

    #[test]
    fn degenerate_counts_do_not_panic() {
        let zero = render(Counts::default(), Duration::ZERO, 0);
        assert!(zero.contains("0/0") && zero.contains("0.0/s"));
        // More finished than total (a confused master) fills the bar, no more.
        let over = Counts {
            total: 3,
            finished: 9,
            failed: 0,
        };
        assert!(
            render(over, Duration::from_secs(1), 0).starts_with(&format!("[{}]", "#".repeat(30)))
        );
        let huge = Counts {
            total: u64::MAX,
            finished: u64::MAX - 1,
            failed: u64::MAX,
        };
        render(huge, Duration::from_secs(1), 0);
    }

    #[test]
    fn disabled_bar_draws_nothing() {
        let start = Instant::now();
        let mut bar = ProgressBar::new(false, start);
        bar.update(start, Counts::default());
        assert!(bar.last_draw.is_none());
    }
}
