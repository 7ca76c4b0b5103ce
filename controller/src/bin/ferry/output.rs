//! How the CLI prints for people: aligned tables, sizes, durations and ages in words, and
//! live progress (a progress bar with bytes, rate and ETA on a terminal; a plain line per
//! change otherwise). `--json` bypasses all of it.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Prints `v` as the API gave it under `--json`, else as `human` tells it.
pub fn emit(json: bool, v: &Value, human: impl FnOnce(&Value)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        human(v);
    }
    Ok(())
}

/// A table whose columns are as wide as their widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    /// Columns aligned right (numbers).
    right: Vec<usize>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
            right: Vec::new(),
        }
    }

    pub fn right(mut self, cols: &[usize]) -> Table {
        self.right = cols.to_vec();
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn print(&self) {
        let cols = self.header.len();
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = w[i].saturating_sub(c.chars().count());
                let last = i + 1 == cells.len();
                if self.right.contains(&i) {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(c);
                } else {
                    out.push_str(c);
                    if !last {
                        out.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    out.push_str("  ");
                }
            }
            println!("{}", out.trim_end());
        };
        line(self.header.clone());
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect());
        }
    }
}

/// A JSON string field, or `-`.
pub fn s(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn size(bytes: u64) -> String {
    ferry_wire::units::format_size(bytes)
}

/// Seconds as people say them: `0.4 s`, `12 s`, `3 min 4 s`, `2 h 5 min`, `3 d 4 h`.
pub fn duration(secs: f64) -> String {
    let t = secs.max(0.0);
    let whole = t.round() as u64;
    if t < 10.0 {
        format!("{t:.1} s")
    } else if whole < 60 {
        format!("{whole} s")
    } else if whole < 3600 {
        format!("{} min {} s", whole / 60, whole % 60)
    } else if whole < 86400 {
        format!("{} h {} min", whole / 3600, (whole % 3600) / 60)
    } else {
        format!("{} d {} h", whole / 86400, (whole % 86400) / 3600)
    }
}

/// An RFC 3339 instant as `2026-12-01 20:35:42 UTC`.
pub fn when(t: &Value) -> String {
    match t.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(ts) => ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => "-".into(),
    }
}

/// How long ago an RFC 3339 instant was: `5 min 3 s ago`.
pub fn ago(t: &Value) -> String {
    match t.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(ts) => {
            let secs =
                (jiff::Timestamp::now().as_millisecond() - ts.as_millisecond()) as f64 / 1000.0;
            format!("{} ago", duration(secs))
        }
        None => "-".into(),
    }
}

/// `text` in red on a terminal (unless `NO_COLOR` is set), as it is otherwise.
pub fn red(text: &str) -> String {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    if colour {
        format!("\x1b[31m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Whether a person is at the other end (stdin and stderr are terminals).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks `question` on a terminal; `yes` or a non-interactive run answers for the user.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes || !interactive() {
        return Ok(());
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(
            ferry_controller::exit::Coded::new("cancelled", "cancelled; nothing was changed")
                .into(),
        )
    }
}

/// What a followed run or job shows at one moment.
pub struct Seen {
    /// One line on its state (`snapshot: 1/2 nodes done`).
    pub line: String,
    pub done_bytes: u64,
    /// Bytes expected, when known.
    pub total_bytes: Option<u64>,
    pub over: bool,
}

/// Shows the progress of something until it is over: a bar on a terminal, plain lines
/// (`[  1.2 s] ...`) when each changes otherwise; nothing at all under `--json`.
pub struct Follow {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    /// Whether the bar shows bytes yet.
    bytes: bool,
    last: String,
    t0: Instant,
}

impl Follow {
    pub fn new(json: bool) -> Follow {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(Self::spinner());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Follow {
            plain: !json && bar.is_none(),
            bar,
            bytes: false,
            last: String::new(),
            t0: Instant::now(),
        }
    }

    /// Until bytes are known: elapsed time and the state.
    fn spinner() -> indicatif::ProgressStyle {
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
    }

    /// Once bytes are known: how many, how fast, how long still.
    fn bytes_bar() -> indicatif::ProgressStyle {
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    }

    pub fn show(&mut self, seen: &Seen) {
        if let Some(b) = &self.bar {
            if let Some(total) = seen.total_bytes.filter(|t| *t > 0) {
                if !self.bytes {
                    b.set_style(Self::bytes_bar());
                    self.bytes = true;
                }
                b.set_length(total.max(seen.done_bytes));
                b.set_position(seen.done_bytes);
            }
            b.set_message(seen.line.clone());
            if seen.over {
                b.finish_and_clear();
            }
        } else if self.plain && seen.line != self.last {
            let bytes = match seen.total_bytes {
                Some(t) if t > 0 => format!(" ({} of {})", size(seen.done_bytes), size(t)),
                _ if seen.done_bytes > 0 => format!(" ({})", size(seen.done_bytes)),
                _ => String::new(),
            };
            eprintln!(
                "[{:>6.1} s] {}{bytes}",
                self.t0.elapsed().as_secs_f64(),
                seen.line
            );
            self.last = seen.line.clone();
        }
    }
}
