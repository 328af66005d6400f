//! What fleetctl prints while it waits: permanent lines (stdout, stderr) and, on a terminal, one
//! live line per unit still being waited for, redrawn in place. When stdout is not a terminal
//! (a pipe, `tee`, a CI log) or the terminal cannot move its cursor (`TERM=dumb`, as in Emacs
//! shells and some CI runners), the live lines are not shown at all, so those see only fleet's
//! messages as plain lines. fleetctl prints no colours, so `NO_COLOR` has nothing to turn off.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// Shared by every unit's waiting task.
pub struct Output {
    inner: Mutex<Inner>,
}

struct Inner {
    live: bool,
    /// (unit, status) in the order the units were given.
    lines: Vec<(String, String)>,
    /// How many lines are on screen below the permanent output.
    drawn: usize,
}

impl Output {
    /// Live lines if stdout is a terminal that can move its cursor.
    pub fn new() -> Output {
        let term = std::env::var("TERM").ok();
        Output::with_live(redraws(std::io::stdout().is_terminal(), term.as_deref()))
    }

    pub fn with_live(live: bool) -> Output {
        Output {
            inner: Mutex::new(Inner {
                live,
                lines: Vec::new(),
                drawn: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while printing leaves nothing inconsistent worth refusing to print over.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permanent line on stdout.
    pub fn println(&self, text: &str) {
        let mut inner = self.lock();
        let mut out = std::io::stdout().lock();
        inner.erase(&mut out);
        let _ = writeln!(out, "{text}");
        inner.draw(&mut out);
        let _ = out.flush();
    }

    /// A permanent line on stderr.
    pub fn eprintln(&self, text: &str) {
        let mut inner = self.lock();
        let mut out = std::io::stdout().lock();
        inner.erase(&mut out);
        let _ = out.flush();
        eprintln!("{text}");
        inner.draw(&mut out);
        let _ = out.flush();
    }

    /// Sets the live line of `unit` (shown on a terminal only).
    pub fn status(&self, unit: &str, text: &str) {
        let mut inner = self.lock();
        if !inner.live {
            return;
        }
        match inner.lines.iter_mut().find(|(u, _)| u == unit) {
            Some((_, t)) if t == text => return,
            Some((_, t)) => *t = text.to_string(),
            None => inner.lines.push((unit.to_string(), text.to_string())),
        }
        let mut out = std::io::stdout().lock();
        inner.erase(&mut out);
        inner.draw(&mut out);
        let _ = out.flush();
    }

    /// Removes the live line of `unit`.
    pub fn done(&self, unit: &str) {
        let mut inner = self.lock();
        if !inner.live {
            return;
        }
        let mut out = std::io::stdout().lock();
        inner.erase(&mut out);
        inner.lines.retain(|(u, _)| u != unit);
        inner.draw(&mut out);
        let _ = out.flush();
    }
}

impl Default for Output {
    fn default() -> Self {
        Output::new()
    }
}

impl Inner {
    fn erase(&mut self, out: &mut impl Write) {
        if self.drawn > 0 {
            // Cursor up over the live lines, then clear to the end of the screen.
            let _ = write!(out, "\x1b[{}A\r\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    fn draw(&mut self, out: &mut impl Write) {
        if !self.live {
            return;
        }
        let width = terminal_width().saturating_sub(1).max(20);
        for (unit, status) in &self.lines {
            let line = format!("Waiting for {unit}: {status}");
            // One screen line each, or the cursor arithmetic above is off.
            let line: String = line.chars().take(width).collect();
            let _ = writeln!(out, "{line}");
        }
        self.drawn = self.lines.len();
    }
}

/// Whether to redraw live lines in place, given whether stdout is a terminal and `TERM`.
fn redraws(stdout_is_terminal: bool, term: Option<&str>) -> bool {
    stdout_is_terminal && term != Some("dumb")
}

/// Columns of the terminal on stdout; 80 when unknown.
fn terminal_width() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer it is given, which points to a
    // live, properly aligned `winsize` on this stack frame; if fd 1 is not a terminal the call
    // fails with ENOTTY and writes nothing.
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    if rc == 0 && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn live_lines_only_on_a_terminal_that_moves_its_cursor() {
        for (terminal, term, want) in [
            (true, Some("xterm-256color"), true),
            (true, None, true),
            (true, Some("dumb"), false),
            (false, Some("xterm-256color"), false),
            (false, None, false),
        ] {
            assert_eq!(super::redraws(terminal, term), want, "{terminal} {term:?}");
        }
    }
}
