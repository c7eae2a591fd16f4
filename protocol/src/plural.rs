//! Counts as a person writes them: `1 task`, `2 tasks`, `0 tasks`.

/// `n` and the word that fits it: `count(1, "slot", "slots")` is `1 slot`.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// [`count`] for a `usize` (collection lengths).
pub fn count_usize(n: usize, one: &str, many: &str) -> String {
    count(n as u64, one, many)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular_everything_else_plural() {
        assert_eq!(count(1u32, "task", "tasks"), "1 task");
        assert_eq!(count(0u32, "task", "tasks"), "0 tasks");
        assert_eq!(count(2u64, "copy", "copies"), "2 copies");
        assert_eq!(count_usize(1, "slot", "slots"), "1 slot");
    }
}
