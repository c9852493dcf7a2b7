//! Turning engine events into progress: a live view on a terminal
//! (indicatif), plain lines for CI logs, or JSON lines for tools.
//!
//! - `tty`: a header with the count of steps done, one line per running step
//!   with its latest output, a byte bar per blob being pulled or pushed;
//!   finished, cached and failed steps scroll above. All on stderr.
//! - `plain`: one line per event on stderr, no escape codes.
//! - `json`: one JSON object per event on stdout, each with `ts` (Unix
//!   milliseconds when it happened) and `elapsed_ms` (since the build
//!   started), then a `summary` object. Diagnostics stay on stderr.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bake_engine::exec::{BuildReport, Event, Explanation, Reason};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::ProgressArg;
use crate::commands::{count, count_as, human};

/// Renders one build's events.
pub(crate) struct Progress {
    mode: Mode,
    started: Instant,
}

enum Mode {
    Plain,
    Json,
    Tty(Mutex<Tty>),
}

struct Tty {
    multi: MultiProgress,
    header: ProgressBar,
    /// Running steps by node id.
    steps: HashMap<String, (ProgressBar, String)>,
    /// Blobs moving, by digest.
    transfers: HashMap<String, ProgressBar>,
}

impl Progress {
    pub(crate) fn new(arg: ProgressArg) -> Self {
        let tty = match arg {
            ProgressArg::Auto => std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb"),
            ProgressArg::Tty => true,
            ProgressArg::Plain | ProgressArg::Json => false,
        };
        let mode = if arg == ProgressArg::Json {
            Mode::Json
        } else if tty {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let header = multi.add(ProgressBar::new(0));
            header.set_style(style("{spinner:.cyan} [{pos}/{len}] {msg} {elapsed}"));
            header.set_message("planning");
            header.enable_steady_tick(Duration::from_millis(100));
            Mode::Tty(Mutex::new(Tty { multi, header, steps: HashMap::new(), transfers: HashMap::new() }))
        } else {
            Mode::Plain
        };
        Self { mode, started: Instant::now() }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One engine event.
    pub(crate) fn event(&self, event: Event) {
        match &self.mode {
            Mode::Plain => {
                if let Some(line) = plain_line(&event) {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
            }
            Mode::Json => {
                let mut value = serde_json::to_value(&event).unwrap_or_default();
                if let Some(map) = value.as_object_mut() {
                    map.insert("ts".to_owned(), unix_millis().into());
                    map.insert("elapsed_ms".to_owned(), self.millis().into());
                }
                let _ = writeln!(std::io::stdout().lock(), "{value}");
            }
            Mode::Tty(tty) => tty.lock().unwrap_or_else(std::sync::PoisonError::into_inner).event(event),
        }
    }

    /// `--explain`: why each step will run, before the build.
    pub(crate) fn explanations(&self, list: &[Explanation]) {
        match &self.mode {
            Mode::Json => {
                for e in list {
                    let mut value = serde_json::to_value(e).unwrap_or_default();
                    if let Some(map) = value.as_object_mut() {
                        map.insert("event".to_owned(), "explain".into());
                        map.insert("ts".to_owned(), unix_millis().into());
                        map.insert("elapsed_ms".to_owned(), self.millis().into());
                    }
                    let _ = writeln!(std::io::stdout().lock(), "{value}");
                }
            }
            _ => self.println(&explain_text(list)),
        }
    }

    fn println(&self, text: &str) {
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        match &self.mode {
            Mode::Tty(tty) => {
                let tty = tty.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let _ = tty.multi.println(text);
            }
            _ => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    /// Clears the live view; the summary follows.
    pub(crate) fn finish(&self) {
        if let Mode::Tty(tty) = &self.mode {
            let tty = tty.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (bar, _) in tty.steps.values() {
                bar.finish_and_clear();
            }
            for bar in tty.transfers.values() {
                bar.finish_and_clear();
            }
            tty.header.finish_and_clear();
            let _ = tty.multi.clear();
        }
    }

    /// The closing summary: each image with its digest, size, layers, steps
    /// run and cached and time, then the totals.
    pub(crate) fn summary(&self, report: &BuildReport, elapsed: Duration) {
        self.finish();
        if let Mode::Json = self.mode {
            let images: Vec<serde_json::Value> = report
                .images
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "name": i.name,
                        "digest": i.digest.to_string(),
                        "size": i.record.size,
                        "layers": i.layers,
                        "executed": i.executed,
                        "cached": i.cached,
                        "millis": i.millis,
                        "tags": i.tags.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let value = serde_json::json!({
                "event": "summary",
                "images": images,
                "executed": report.executed,
                "cached": report.cached,
                "millis": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "ts": unix_millis(),
            });
            let _ = writeln!(std::io::stdout().lock(), "{value}");
            return;
        }
        let mut out = String::new();
        for image in &report.images {
            let tags: Vec<String> = image.tags.iter().map(ToString::to_string).collect();
            let tags = if tags.is_empty() { String::new() } else { format!(" [{}]", tags.join(", ")) };
            let _ = writeln!(
                out,
                "{} {} {} in {}, {} run, {} cached, ready at {}{tags}",
                image.name,
                image.digest,
                human(image.record.size),
                count(image.layers, "layer"),
                image.executed,
                image.cached,
                seconds(image.millis),
            );
        }
        let _ = writeln!(
            out,
            "built in {:.2}s: {} run, {} cached",
            elapsed.as_secs_f64(),
            count(report.executed, "step"),
            report.cached
        );
        let _ = write!(std::io::stderr().lock(), "{out}");
    }
}

impl Tty {
    fn event(&mut self, event: Event) {
        match event {
            Event::Planned { run, .. } => {
                self.header.set_length(run as u64);
                self.header.set_message("building");
            }
            Event::Started { node, description } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(style("  {spinner:.green} {prefix} {wide_msg:.dim} {elapsed}"));
                bar.set_prefix(truncate(&description, 60));
                bar.enable_steady_tick(Duration::from_millis(100));
                self.steps.insert(node, (bar, description));
            }
            Event::Output { node, line } => {
                if let Some((bar, _)) = self.steps.get(&node) {
                    bar.set_message(truncate(&line, 200));
                }
            }
            Event::Finished { node, millis } => {
                if let Some((bar, description)) = self.steps.remove(&node) {
                    bar.finish_and_clear();
                    let _ = self.multi.println(format!("✔ {description} ({})", seconds(millis)));
                }
                self.header.inc(1);
            }
            Event::Failed { node, millis, message } => {
                if let Some((bar, description)) = self.steps.remove(&node) {
                    bar.finish_and_clear();
                    let _ = self.multi.println(format!("✘ {description} ({}): {message}", seconds(millis)));
                }
            }
            Event::Stalled { digest, seconds, .. } if self.transfers.contains_key(&digest) => {
                if let Some(bar) = self.transfers.get(&digest) {
                    bar.set_message(format!("stalled for {seconds} s"));
                }
            }
            Event::Transfer { what, digest, direction, done, total } => {
                let bar = self.transfers.entry(digest.clone()).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new(total));
                    bar.set_style(style("  {prefix} [{bar:24}] {bytes}/{total_bytes} {bytes_per_sec} {msg:.yellow}"));
                    let verb = match direction {
                        bake_engine::exec::Direction::Pull => "pull",
                        bake_engine::exec::Direction::Push => "push",
                    };
                    bar.set_prefix(format!("{verb} {} {}", truncate(&what, 40), short(&digest)));
                    bar
                });
                bar.set_position(done);
                // Bytes moved: no longer stalled.
                bar.set_message("");
                if total > 0 && done >= total {
                    bar.finish_and_clear();
                    self.transfers.remove(&digest);
                }
            }
            other => {
                // A step spared by early cutoff was counted as one to run.
                if let Event::Cached { cutoff: true, .. } = &other {
                    self.header.inc(1);
                }
                if let Some(line) = plain_line(&other) {
                    let _ = self.multi.println(line);
                }
            }
        }
    }
}

/// One event as a plain line on stderr (for commands without a live view).
pub(crate) fn plain(event: &Event) {
    if let Some(line) = plain_line(event) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// One event as one plain line, or nothing for events only a live view shows.
fn plain_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Planned { steps, run, cached } => {
            format!("plan     {}: {run} to run, {cached} cached", count(*steps, "step"))
        }
        Event::Pulling { image } => format!("pull     {image}"),
        Event::Pulled { image, digest } => format!("pulled   {image} {}", short(digest)),
        Event::Started { description, .. } => format!("run      {description}"),
        Event::Cached { description, remote, cutoff, .. } => {
            let from = match (remote, cutoff) {
                (Some(r), _) => format!(" (from {r})"),
                (None, true) => " (same input as before: early cutoff)".to_owned(),
                (None, false) => String::new(),
            };
            format!("cached   {description}{from}")
        }
        Event::Finished { node, millis } => format!("done     {node} ({})", seconds(*millis)),
        Event::Failed { node, millis, message } => format!("failed   {node} ({}): {message}", seconds(*millis)),
        Event::Output { node, line } => format!("{node} | {line}"),
        Event::Transfer { what, digest, done, total, .. } if total > &0 && done >= total => {
            format!("fetched  {what} {} ({})", short(digest), human(*total))
        }
        Event::Transfer { .. } => return None,
        Event::Stalled { what, digest, direction, done, total, seconds } => {
            let verb = match direction {
                bake_engine::exec::Direction::Pull => "pull",
                bake_engine::exec::Direction::Push => "push",
            };
            format!(
                "stalled  {verb} {what} {} at {}/{}: no data for {seconds} s",
                short(digest),
                human(*done),
                human(*total)
            )
        }
        Event::Image { name, digest, size, .. } => format!("image    {name} {} ({})", short(digest), human(*size)),
        Event::Index { name, digest, platforms } => {
            format!("index    {name} {} ({})", short(digest), platforms.join(", "))
        }
        Event::Pushed { tag, digest } => format!("pushed   {tag} {}", short(digest)),
        Event::CacheExported { reference, entries } => {
            format!("cache    {} exported to {reference}", count_as(*entries, "entry", "entries"))
        }
        Event::Exported { what, dest } => format!("output   {what} -> {}", dest.display()),
        Event::Artifact { name, dest } => format!("artifact {name} -> {}", dest.display()),
        Event::Warning { message } => format!("warning: {message}"),
    })
}

/// `bake explain` and `--explain` as text.
pub(crate) fn explain_text(list: &[Explanation]) -> String {
    if list.is_empty() {
        return "nothing to rebuild: every step has a result\n".to_owned();
    }
    let mut out = String::new();
    let causes = list.iter().filter(|e| e.is_root_cause()).count();
    let _ =
        writeln!(out, "{} will run ({} of them because a parent does)", count(list.len(), "step"), list.len() - causes);
    for e in list {
        let _ = writeln!(out, "{}  {}", e.node, e.description);
        for r in &e.reasons {
            let _ = writeln!(out, "    {}", reason_text(r));
        }
    }
    out
}

fn reason_text(r: &Reason) -> String {
    let some = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".to_owned());
    let list = |what: &str, paths: &[String]| -> Option<String> {
        if paths.is_empty() {
            return None;
        }
        let shown: Vec<&str> = paths.iter().take(10).map(String::as_str).collect();
        let more = if paths.len() > 10 { format!(" and {} more", paths.len() - 10) } else { String::new() };
        Some(format!("{what}: {}{more}", shown.join(", ")))
    };
    match r {
        Reason::NoEntry => "never built before".to_owned(),
        Reason::Forced => "--no-cache".to_owned(),
        Reason::FilesChanged { changed, added, removed } => {
            let parts: Vec<String> = [list("changed", changed), list("added", added), list("removed", removed)]
                .into_iter()
                .flatten()
                .collect();
            if parts.is_empty() {
                "the files it copies changed".to_owned()
            } else {
                format!("files {}", parts.join("; "))
            }
        }
        Reason::ArgChanged { name, old, new } => format!("arg {name}: {} -> {}", some(old), some(new)),
        Reason::BaseChanged { image, old, new } => {
            format!("base image {image} moved: {} -> {}", short(old), short(new))
        }
        Reason::ParentChanged { node } => format!("it builds on {node}, which changes"),
        Reason::DefinitionChanged { field, old, new } => {
            format!("{field} changed: {} -> {}", truncate(&some(old), 60), truncate(&some(new), 60))
        }
        Reason::Evicted => "its earlier result is no longer in the store".to_owned(),
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn seconds(millis: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let s = millis as f64 / 1000.0;
    format!("{s:.2}s")
}
