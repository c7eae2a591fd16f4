//! The size of everything that comes from outside, in one place. Each limit is enforced where the
//! value enters (the CLI and the master's `Submit`, the master's `Hello` check, the worker and the
//! master's `Finished` check), so nothing built from accepted values can outgrow a frame.

/// Worker names, host names and group names, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A command's argv, environment and working directory together, in bytes. Linux allows 2 MiB of
/// argv and environment per `exec` (128 KiB per string); a spec this size still fits a frame
/// many times over.
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// Arguments of one command. Bounds the allocation of a spec of many empty strings.
pub const MAX_ARGS: usize = 32_768;

/// Environment variables of one command.
pub const MAX_ENV_VARS: usize = 4_096;

/// A task's working directory, in bytes (Linux's `PATH_MAX`).
pub const MAX_CWD_BYTES: usize = 4_096;

/// The tail of a task's stdout or stderr kept in its outcome, in bytes, after any lossy UTF-8
/// conversion.
pub const MAX_TAIL_BYTES: usize = 64 << 10;

/// A failure message (`Failed { error }`), in bytes.
pub const MAX_ERROR_BYTES: usize = 4 << 10;

/// Cuts `text` to at most `max` bytes on a character boundary, keeping the start and ending with
/// a marker that says how much was cut. Returns whether it cut.
pub fn truncate_with_marker(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let cut = text.len();
    // The marker's length depends on the count, which is at most `cut`: reserve for that.
    let marker_room = format!(" [... {cut} bytes cut]").len();
    let mut keep = max.saturating_sub(marker_room);
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    let marker = format!(" [... {} bytes cut]", cut - keep);
    text.truncate(keep);
    if text.len() + marker.len() <= max {
        text.push_str(&marker);
    }
    true
}

/// Keeps the last `max` bytes of `text` (a tail), cut on a character boundary.
pub fn keep_tail(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.drain(..start);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_start_marks_the_cut_and_fits() {
        for max in [0, 5, 30, 100, 4096] {
            let mut s = "é".repeat(3000);
            let before = s.len();
            assert!(truncate_with_marker(&mut s, max));
            assert!(s.len() <= max, "{} > {max}", s.len());
            if max >= 30 {
                assert!(s.starts_with('é') && s.ends_with("bytes cut]"), "{s}");
                let kept = s.find(" [...").unwrap();
                assert!(s.contains(&format!("{} bytes cut", before - kept)));
            }
        }
        let mut short = String::from("short");
        assert!(!truncate_with_marker(&mut short, 5));
        assert_eq!(short, "short");
    }

    #[test]
    fn tails_keep_the_end_on_a_char_boundary() {
        let mut s = format!("{}end", "é".repeat(100));
        assert!(keep_tail(&mut s, 8));
        assert!(s.len() <= 8 && s.ends_with("end"), "{s}");
        let mut t = String::from("abc");
        assert!(!keep_tail(&mut t, 3));
    }
}
