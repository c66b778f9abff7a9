//! qemu-img's progress line, `    (42.00/100%)` rewritten in place with `\r` (on stderr, so it
//! never mixes with a command's output).

use std::io::Write;

/// A progress indicator that prints whenever it advanced by at least one percent.
pub struct Progress {
    enabled: bool,
    total: u64,
    done: u64,
    last_printed: Option<f64>,
}

impl Progress {
    /// A progress line for `total` units of work; prints nothing unless `enabled`.
    pub fn new(enabled: bool, total: u64) -> Progress {
        let mut p = Progress {
            enabled,
            total,
            done: 0,
            last_printed: None,
        };
        p.print(0.0);
        p
    }

    fn print(&mut self, pct: f64) {
        if !self.enabled {
            return;
        }
        if let Some(last) = self.last_printed {
            if pct - last < 1.0 && pct < 100.0 {
                return;
            }
        }
        self.last_printed = Some(pct);
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "    ({pct:.2}/100%)\r");
        let _ = e.flush();
    }

    /// Records `n` more units done.
    pub fn advance(&mut self, n: u64) {
        self.done = self.done.saturating_add(n).min(self.total);
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        self.print(pct);
    }

    /// Prints 100% and ends the line.
    pub fn finish(&mut self) {
        if self.enabled {
            self.last_printed = None;
            self.print(100.0);
            eprintln!();
            self.enabled = false;
        }
    }
}
