//! Progress a person can watch: on a terminal, a bar per table being loaded (rows, bytes,
//! rate, ETA) under an overall bar; elsewhere, a log line per finished table and a summary
//! line every ten seconds. A final summary either way.

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    bars: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    tables: Mutex<HashMap<String, TableProgress>>,
    total_bytes: u64,
    bytes: AtomicU64,
    rows: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
}

struct TableProgress {
    bar: Option<ProgressBar>,
    rows: u64,
    bytes: u64,
    units_left: usize,
}

/// What a finished load did.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Progress {
    /// `tables`: (name, estimated bytes, units) of every table to load.
    pub fn new(tables: &[(String, u64, usize)]) -> Progress {
        let total_bytes = tables.iter().map(|t| t.1).sum();
        let bars =
            std::io::stderr().is_terminal().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let overall = bars.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(total_bytes));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix("full load");
            bar
        });
        let map = tables
            .iter()
            .map(|(name, _, units)| (name.clone(), TableProgress { bar: None, rows: 0, bytes: 0, units_left: *units }))
            .collect();
        Progress {
            bars,
            overall,
            tables: Mutex::new(map),
            total_bytes,
            bytes: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// A unit of `table` started (the table's bar appears with its first unit).
    pub fn unit_started(&self, table: &str, estimated_bytes: u64) {
        let (Some(bars), Ok(mut tables)) = (&self.bars, self.tables.lock()) else { return };
        if let Some(t) = tables.get_mut(table) {
            if t.bar.is_none() {
                let bar = bars.insert_from_back(0, ProgressBar::new(estimated_bytes.max(1)));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(shorten(table, 24));
                t.bar = Some(bar);
            }
        }
    }

    /// Bytes of `table` went through.
    pub fn advance(&self, table: &str, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(overall) = &self.overall {
            overall.inc(bytes);
        }
        if let Ok(mut tables) = self.tables.lock() {
            if let Some(t) = tables.get_mut(table) {
                t.bytes += bytes;
                if let Some(bar) = &t.bar {
                    bar.inc(bytes);
                    if t.bytes > bar.length().unwrap_or(0) {
                        bar.set_length(t.bytes);
                    }
                }
            }
        }
        if self.bars.is_none() {
            self.periodic_line();
        }
    }

    /// A unit of `table` finished with `rows` rows; when it was the table's last, returns
    /// the table's rows.
    pub fn unit_finished(&self, table: &str, rows: u64) -> Option<u64> {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        let Ok(mut tables) = self.tables.lock() else { return None };
        let t = tables.get_mut(table)?;
        t.rows += rows;
        t.units_left = t.units_left.saturating_sub(1);
        if let Some(bar) = &t.bar {
            bar.set_message(format!("{} rows", t.rows));
        }
        if t.units_left > 0 {
            return None;
        }
        match &t.bar {
            Some(bar) => bar.finish_and_clear(),
            None => tracing::info!(table, rows = t.rows, bytes = %HumanBytes(t.bytes), "table loaded"),
        }
        if let (Some(bars), Some(overall)) = (&self.bars, &self.overall) {
            let _ = bars.println(format!("loaded {table}: {} rows, {}", t.rows, HumanBytes(t.bytes)));
            overall.set_message(format!("{} rows", self.rows.load(Ordering::Relaxed)));
        }
        Some(t.rows)
    }

    fn periodic_line(&self) {
        let Ok(mut last) = self.last_line.lock() else { return };
        if last.elapsed() < Duration::from_secs(10) {
            return;
        }
        *last = Instant::now();
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            done = %HumanBytes(bytes),
            of = %HumanBytes(self.total_bytes),
            rows = self.rows.load(Ordering::Relaxed),
            rate = %format!("{}/s", HumanBytes((bytes as f64 / secs) as u64)),
            "full load in progress"
        );
    }

    pub fn finish(&self) -> Summary {
        if let Some(overall) = &self.overall {
            overall.finish_and_clear();
        }
        let tables = self.tables.lock().map(|t| t.len()).unwrap_or(0);
        Summary {
            tables,
            rows: self.rows.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        }
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let tail: String = s.chars().rev().take(max - 1).collect::<Vec<_>>().into_iter().rev().collect();
    format!("…{tail}")
}
