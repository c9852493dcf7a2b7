//! Turning engine events into lines on stderr. Plain lines for now: one per
//! event, no escape codes, fit for CI logs.

use std::io::Write;
use std::time::Duration;

use bake_engine::exec::{BuildReport, Event};

use crate::commands::human;

/// One event as one line.
pub(crate) fn plain(event: &Event) {
    let line = match event {
        Event::Pulling { image } => format!("pull     {image}"),
        Event::Pulled { image, digest } => format!("pulled   {image} {}", short(digest)),
        Event::Started { description, .. } => format!("run      {description}"),
        Event::Cached { description, .. } => format!("cached   {description}"),
        Event::Finished { node, millis } => format!("done     {node} ({})", seconds(*millis)),
        Event::Output { node, line } => format!("{node} | {line}"),
        Event::Image { name, digest, size } => format!("image    {name} {} ({})", short(digest), human(*size)),
        Event::Pushed { tag, digest } => format!("pushed   {tag} {}", short(digest)),
        Event::Exported { what, dest } => format!("output   {what} -> {}", dest.display()),
        Event::Artifact { name, dest } => format!("artifact {name} -> {}", dest.display()),
        Event::Warning { message } => format!("warning: {message}"),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The closing summary: each image with its digest and size, then counts.
pub(crate) fn summary(report: &BuildReport, elapsed: Duration) {
    let mut err = std::io::stderr().lock();
    for image in &report.images {
        let tags: Vec<String> = image.tags.iter().map(ToString::to_string).collect();
        let tags = if tags.is_empty() { String::new() } else { format!(" [{}]", tags.join(", ")) };
        let _ = writeln!(
            err,
            "{} {} {} in {}{tags}",
            image.name,
            image.digest,
            human(image.record.size),
            crate::commands::count(image.layers, "layer")
        );
    }
    let _ = writeln!(
        err,
        "built in {:.2}s: {} run, {} cached",
        elapsed.as_secs_f64(),
        crate::commands::count(report.executed, "step"),
        report.cached
    );
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn seconds(millis: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let s = millis as f64 / 1000.0;
    format!("{s:.2}s")
}
