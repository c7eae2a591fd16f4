//! An `io::Error` as a person reads it in a one-line message: `address already in use`, not
//! `Address already in use (os error 98)`. The errno's number says nothing to a person and the
//! capital would sit mid-sentence after a colon.

use std::fmt;
use std::io;

/// Displays an `io::Error` as its cause only: the system's text without `(os error N)`, first
/// letter in lower case. Errors that carry a custom message are shown as they are.
pub struct Cause<'a>(pub &'a io::Error);

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        let text = match self.0.raw_os_error() {
            Some(code) => text
                .strip_suffix(&format!(" (os error {code})"))
                .unwrap_or(&text)
                .to_string(),
            None => text,
        };
        let mut chars = text.chars();
        match chars.next() {
            // Only an ordinary capitalised word: `EOF`, `TLS` and the like keep their case.
            Some(first)
                if first.is_ascii_uppercase()
                    && chars.clone().next().is_some_and(|c| c.is_ascii_lowercase()) =>
            {
                write!(f, "{}{}", first.to_ascii_lowercase(), chars.as_str())
            }
            _ => f.write_str(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_lose_their_number_and_capital() {
        // EADDRINUSE on Linux (the crate does not depend on libc).
        let e = io::Error::from_raw_os_error(98);
        assert_eq!(Cause(&e).to_string(), "address already in use");
        let custom = io::Error::other("EOF while reading");
        assert_eq!(Cause(&custom).to_string(), "EOF while reading");
        let kind = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(Cause(&kind).to_string(), "timed out");
    }
}
