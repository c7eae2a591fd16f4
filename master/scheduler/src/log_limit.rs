//! `LogLimiter`: at most a few lines per peer, then silence with a count until the peer has been
//! quiet for a whole window, summed up
//! in one line per peer after a second, then after 2, 4 ... at most a minute apart while the
//! flood goes on (a flood slowed down by the session layer lasts long: one line a second would
//! be a line per few attempts again). A peer that sends junk (wrong tokens, frames of unknown
//! ids, handshakes it never finishes) costs the log a bounded number of lines, however fast it
//! sends. Like the rest of the crate it does no IO and reads no clock: the caller passes `now`
//! and prints what [`LogLimiter::summarise`] hands back.

use std::collections::BTreeMap;

/// Peers tracked at once. Beyond this, lines from new peers are counted together (`others`):
/// a flood from many addresses cannot grow the table without bound.
const MAX_PEERS: usize = 4_096;
/// A peer's suppressed lines are first summed up after this long; the interval doubles with each
/// summary while the peer goes on, up to `MAX_SUMMARY_INTERVAL_MS`.
const SUMMARY_INTERVAL_MS: u64 = 1_000;
const MAX_SUMMARY_INTERVAL_MS: u64 = 60_000;

#[derive(Debug)]
struct Window {
    /// When the peer last asked for a line (written or not): a window of quiet since then
    /// gives it its lines back.
    last_ms: u64,
    lines: u32,
    suppressed: u64,
    /// When the last summary of this peer was given (or its first suppression).
    summary_ms: u64,
    /// How long after `summary_ms` the next summary is due.
    interval_ms: u64,
}

#[derive(Debug)]
pub struct LogLimiter<K: Ord> {
    lines_per_window: u32,
    window_ms: u64,
    /// Ordered, so summaries come out in one deterministic order.
    peers: BTreeMap<K, Window>,
    /// Lines suppressed for peers that found the table full, and since when.
    others: u64,
    others_since_ms: u64,
}

/// One summary line's content: `suppressed` lines of `peer` (`None`: peers beyond the table)
/// were not written in the last `over_ms`.
#[derive(Debug, PartialEq)]
pub struct Suppressed<K> {
    pub peer: Option<K>,
    pub suppressed: u64,
    pub over_ms: u64,
}

impl<K: Ord + Clone> LogLimiter<K> {
    /// At most `lines_per_window` lines per peer until it has been quiet for `window_ms`.
    pub fn new(lines_per_window: u32, window_ms: u64) -> Self {
        LogLimiter {
            lines_per_window,
            window_ms,
            peers: BTreeMap::new(),
            others: 0,
            others_since_ms: 0,
        }
    }

    /// Whether a line about `peer` may be written now; if not, it is counted for the summary.
    pub fn allow(&mut self, now_ms: u64, peer: &K) -> bool {
        if !self.peers.contains_key(peer) && self.peers.len() >= MAX_PEERS {
            if self.others == 0 {
                self.others_since_ms = now_ms;
            }
            self.others += 1;
            return false;
        }
        let w = self.peers.entry(peer.clone()).or_insert(Window {
            last_ms: now_ms,
            lines: 0,
            suppressed: 0,
            summary_ms: now_ms,
            interval_ms: SUMMARY_INTERVAL_MS,
        });
        // IMPORTANT: the budget comes back only after a quiet window, not every window: a flood
        // slowed down to one attempt per window's worth would otherwise write a line per few.
        if now_ms.saturating_sub(w.last_ms) >= self.window_ms {
            w.lines = 0;
        }
        w.last_ms = now_ms;
        if w.lines < self.lines_per_window {
            w.lines += 1;
            return true;
        }
        if w.suppressed == 0 {
            w.summary_ms = now_ms;
        }
        w.suppressed += 1;
        false
    }

    /// The summaries due now (each peer with suppressed lines, at most once a second), and
    /// forgets peers whose window has passed quietly. Call it from the periodic sweep.
    pub fn summarise(&mut self, now_ms: u64) -> Vec<Suppressed<K>> {
        let mut due = Vec::new();
        let window_ms = self.window_ms;
        self.peers.retain(|peer, w| {
            if w.suppressed > 0 && now_ms.saturating_sub(w.summary_ms) >= w.interval_ms {
                due.push(Suppressed {
                    peer: Some(peer.clone()),
                    suppressed: w.suppressed,
                    over_ms: now_ms - w.summary_ms,
                });
                w.suppressed = 0;
                w.summary_ms = now_ms;
                w.interval_ms = (w.interval_ms * 2).min(MAX_SUMMARY_INTERVAL_MS);
            }
            w.suppressed > 0 || now_ms.saturating_sub(w.last_ms) < window_ms
        });
        if self.others > 0 && now_ms.saturating_sub(self.others_since_ms) >= SUMMARY_INTERVAL_MS {
            due.push(Suppressed {
                peer: None,
                suppressed: self.others,
                over_ms: now_ms - self.others_since_ms,
            });
            self.others = 0;
        }
        due
    }

    /// Some suppressed line still waits for its summary: keep calling `summarise`.
    pub fn has_pending(&self) -> bool {
        self.others > 0 || self.peers.values().any(|w| w.suppressed > 0)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_costs_a_few_lines_and_summaries_ever_further_apart() {
        let mut l = LogLimiter::new(5, 10_000);
        let mut written = 0;
        let mut summaries = Vec::new();
        // 5,000 lines over 50 s from one peer.
        for i in 0..5_000u64 {
            let now = i * 10;
            if l.allow(now, &"a") {
                written += 1;
            }
            summaries.extend(l.summarise(now));
        }
        // The flood never pauses for a window: 5 lines, then only summaries.
        assert_eq!(written, 5);
        let at: Vec<u64> = summaries.iter().map(|s| s.over_ms).collect();
        assert_eq!(
            at,
            vec![1_000, 2_000, 4_000, 8_000, 16_000],
            "{summaries:?}"
        );
        let counted: u64 = summaries.iter().map(|s| s.suppressed).sum();
        let pending: u64 = l.summarise(200_000).iter().map(|s| s.suppressed).sum();
        assert_eq!(
            written + counted + pending,
            5_000,
            "every line is written or counted"
        );
        assert!(!l.has_pending());
    }

    /// 500 wrong tokens one after another, each answered 100 ms late (the acceptance run took
    /// 90 s): a budget that came back every window wrote 51 lines.
    #[test]
    fn a_slow_flood_gets_no_new_budget_until_it_pauses() {
        let mut l = LogLimiter::new(5, 10_000);
        let mut lines = 0;
        for i in 0..500u64 {
            let now = i * 180;
            lines += u64::from(l.allow(now, &"ip"));
            lines += l.summarise(now).len() as u64;
        }
        assert!(lines <= 12, "{lines} lines");
        // Quiet for a window: the next line is written.
        assert!(l.allow(500 * 180 + 10_000, &"ip"));
    }

    #[test]
    fn peers_are_limited_apart_and_a_quiet_one_is_forgotten() {
        let mut l = LogLimiter::new(2, 1_000);
        assert!(l.allow(0, &1));
        assert!(l.allow(0, &1));
        assert!(!l.allow(0, &1));
        assert!(l.allow(0, &2), "another peer has its own budget");
        assert_eq!(
            l.summarise(1_000),
            vec![Suppressed {
                peer: Some(1),
                suppressed: 1,
                over_ms: 1_000
            }]
        );
        assert!(l.allow(1_000, &1), "a new window");
        assert!(l.summarise(5_000).is_empty());
        assert_eq!(l.tracked(), 0, "quiet peers are forgotten");
    }

    #[test]
    fn the_table_is_bounded() {
        let mut l = LogLimiter::new(1, 10_000);
        for p in 0..MAX_PEERS as u64 + 10 {
            l.allow(0, &p);
        }
        assert_eq!(l.tracked(), MAX_PEERS);
        let s = l.summarise(1_000);
        assert_eq!(
            s.last(),
            Some(&Suppressed {
                peer: None,
                suppressed: 10,
                over_ms: 1_000
            })
        );
    }
}
