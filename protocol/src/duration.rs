//! Human durations for the command line: `250ms`, `3s`, `1.5s`, `1m`, `2h`; a bare number is seconds.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 250ms, 3s, 1m"))?;
    let scale_ms = match unit.trim() {
        "ms" => 1.0,
        "" | "s" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    let ms = value * scale_ms;
    if !(0.0..=1e15).contains(&ms) {
        return Err(format!("invalid duration {text:?}: out of range"));
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

/// The duration in the largest unit that holds it exactly (`2h`, `90s`, `250ms`), in the form
/// [`parse_duration`] reads back: for command lines the master writes, and for log lines.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// For people, to a tenth of a second or a few units: `850ms`, `12.3s`, `4m05s`, `3h12m`,
/// `2d04h` (tables, log lines; not read back).
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1_000;
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1e3),
        60_000..=3_599_999 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_what_it_parses() {
        for (text, ms) in [
            ("2h", 7_200_000),
            ("90s", 90_000),
            ("5m", 300_000),
            ("250ms", 250),
            ("0s", 0),
        ] {
            assert_eq!(format_duration(Duration::from_millis(ms)), text);
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)));
        }
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("1e400s").is_err());
    }
}
