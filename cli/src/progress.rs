//! What `pull` shows while it works: a bar per layer on a terminal, JSON
//! event lines with --json, nothing otherwise.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use oci_cache::Progress;
use serde_json::json;

/// Where a pull's progress reports go.
#[derive(Clone)]
pub enum Display {
    None,
    Json,
    Bars(Arc<Bars>),
}

pub struct Bars {
    multi: MultiProgress,
    layers: Mutex<Vec<Option<ProgressBar>>>,
}

impl Display {
    /// JSON events with --json; bars when stderr is a terminal.
    pub fn choose(json: bool) -> Display {
        if json {
            Display::Json
        } else if std::io::stderr().is_terminal() {
            Display::Bars(Arc::new(Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
                layers: Mutex::new(Vec::new()),
            }))
        } else {
            Display::None
        }
    }

    pub fn wanted(&self) -> bool {
        !matches!(self, Display::None)
    }

    /// Called from the library's threads, for every report.
    pub fn report(&self, progress: &Progress) {
        match self {
            Display::None => {}
            Display::Json => {
                let line = json!({
                    "event": "progress",
                    "layer": progress.layer,
                    "digest": progress.digest.to_string(),
                    "downloaded": progress.downloaded,
                    "download_total": progress.download_total,
                    "written": progress.written,
                    "written_total": progress.written_total,
                });
                // One line per event, whole, even with several layers at once.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
            Display::Bars(bars) => bars.report(progress),
        }
    }

    /// Ends the bars, leaving them drawn, and prints the summary.
    pub fn finish(&self, summary: &str) {
        if let Display::Bars(bars) = self {
            let layers = bars.layers.lock().unwrap_or_else(|p| p.into_inner());
            for bar in layers.iter().flatten() {
                bar.finish();
            }
            // Below the finished bars, which no longer redraw.
            let _ = writeln!(std::io::stderr(), "\n{summary}");
        }
    }

    /// Drops the bars of a failed pull.
    pub fn abandon(&self) {
        if let Display::Bars(bars) = self {
            let layers = bars.layers.lock().unwrap_or_else(|p| p.into_inner());
            for bar in layers.iter().flatten() {
                bar.abandon();
            }
        }
    }
}

impl Bars {
    fn report(&self, progress: &Progress) {
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        if layers.len() <= progress.layer {
            layers.resize(progress.layer + 1, None);
        }
        let bar = layers[progress.layer].get_or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "layer {prefix} {bar:24} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!(
                "{} {}",
                progress.layer,
                short(&progress.digest.to_string())
            ));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if let Some(total) = progress.download_total {
            bar.set_length(total);
        }
        bar.set_position(progress.downloaded);
        bar.set_message(format!(
            "written {}",
            indicatif::HumanBytes(progress.written)
        ));
    }
}

/// `sha256:0123456789ab`: enough of a digest to tell layers apart.
fn short(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |i| i + 1) + 12;
    digest.get(..end).unwrap_or(digest)
}
