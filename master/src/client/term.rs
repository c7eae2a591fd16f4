//! What the client knows about the terminal it prints to: whether there is one, how wide it is,
//! and whether colour is welcome. Piped output gets none of it (scripts read the same text every
//! time).

use std::io::IsTerminal;

/// How a table is laid out for where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layout {
    /// Cut the flexible columns so a line fits in this many characters (a terminal's width).
    pub width: Option<usize>,
    /// Colour the cells of coloured columns (a terminal, and `NO_COLOR` unset).
    pub color: bool,
}

impl Layout {
    /// For stdout: a terminal's width and colour, nothing when piped.
    pub fn for_stdout() -> Layout {
        if !std::io::stdout().is_terminal() {
            return Layout::default();
        }
        Layout {
            width: Some(stdout_width().unwrap_or(DEFAULT_WIDTH)),
            color: color_wanted(std::env::var_os("NO_COLOR"), std::env::var_os("TERM")),
        }
    }
}

/// When the terminal does not say (`TIOCGWINSZ` fails, as under some multiplexers).
const DEFAULT_WIDTH: usize = 80;

/// <https://no-color.org>: a `NO_COLOR` that is set and not empty turns colour off; so does a
/// `dumb` terminal.
fn color_wanted(no_color: Option<std::ffi::OsString>, term: Option<std::ffi::OsString>) -> bool {
    let no_color = no_color.is_some_and(|v| !v.is_empty());
    let dumb = term.is_some_and(|t| t == "dumb");
    !no_color && !dumb
}

/// The width of the terminal on stdout: the kernel's window size, else `$COLUMNS`.
fn stdout_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass, nothing else.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        return Some(usize::from(size.ws_col));
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_and_dumb_terminals_turn_colour_off() {
        assert!(color_wanted(None, Some("xterm-256color".into())));
        assert!(
            color_wanted(Some("".into()), None),
            "an empty NO_COLOR is unset"
        );
        assert!(!color_wanted(Some("1".into()), None));
        assert!(!color_wanted(None, Some("dumb".into())));
    }
}
