//! `bake watch`: the development loop.
//!
//! Build, then wait for a relevant change (see `bake_engine::watch`), then
//! build again: the workspace is loaded again each time (an edit to
//! `build.kdl` re-plans), and the caches make a build run only the steps the
//! change reaches. With `--run IMAGE`, the image runs after the first build
//! and is restarted after every build that gives it a new digest: the old
//! container gets its stop signal, then a kill after `--stop-timeout`. A
//! build that fails prints its diagnostic and leaves the running container
//! alone. Each cycle says what changed, what ran, and how long it took from
//! the first change to the new container starting.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bake_engine::container::{Container, ContainerError, RunOptions};
use bake_engine::exec::{BuildOptions, Engine, Event};
use bake_engine::graph::Plan;
use bake_engine::sandbox::Control;
use bake_engine::watch::{WatchSet, Watcher};
use miette::Report;
use tokio::sync::mpsc::UnboundedSender;

use crate::args::WatchArgs;
use crate::commands::{Failure, engine, exec_failure, load, run_failure, runtime};

type Exit = Pin<Box<dyn Future<Output = Result<i32, ContainerError>>>>;

/// The container `--run` keeps going.
struct Running {
    digest: String,
    stop_signal: String,
    control: UnboundedSender<Control>,
    exit: Exit,
}

fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "watch: {line}");
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// Progress lines worth a development loop: steps that run, their output,
/// failures and warnings; cached steps stay quiet.
fn render(event: Event) {
    match event {
        Event::Cached { .. }
        | Event::Planned { .. }
        | Event::Transfer { .. }
        | Event::Image { .. }
        | Event::Index { .. } => {}
        other => crate::render::plain(&other),
    }
}

pub(crate) fn watch(file: &Path, args: &WatchArgs) -> Result<(), Failure> {
    let engine = engine()?;
    let runtime = runtime()?;
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let cancel = tokio_util::sync::CancellationToken::new();
    let options = BuildOptions {
        jobs: args.jobs,
        cancel: cancel.clone(),
        allow_insecure: args.allow.iter().any(|a| a == "security.insecure"),
        ..BuildOptions::default()
    };
    runtime.block_on(async {
        // Ctrl-C or SIGTERM, at any moment (in a build too): stop the build,
        // the container and the watch.
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            on_signal.cancel();
        });
        let mut loop_ = Loop { engine: &engine, args, file: &file, options, running: None, files: Vec::new() };
        loop_.run().await
    })
}

struct Loop<'a> {
    engine: &'a Engine,
    args: &'a WatchArgs,
    file: &'a Path,
    options: BuildOptions,
    running: Option<Running>,
    /// The workspace's files as last loaded.
    files: Vec<PathBuf>,
}

impl Loop<'_> {
    async fn run(&mut self) -> Result<(), Failure> {
        let mut set = self.cycle(Instant::now(), &BTreeSet::new()).await?;
        if self.options.cancel.is_cancelled() {
            self.stop().await;
            return Ok(());
        }
        let mut watcher = Watcher::start(&set).map_err(|e| Failure::Usage(Report::new(e)))?;
        let quiet = Duration::from_millis(self.args.debounce);
        let cancel = self.options.cancel.clone();
        say(&format!("watching {} for changes (Ctrl-C to stop)", self.file.display()));
        loop {
            let exit = async {
                match self.running.as_mut() {
                    Some(r) => (&mut r.exit).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                batch = watcher.next_batch(&set, quiet, Duration::from_secs(2)) => {
                    let Some((first, paths)) = batch else { break };
                    set = self.cycle(first, &paths).await?;
                    if !watcher.covers(&set) {
                        watcher = Watcher::start(&set).map_err(|e| Failure::Usage(Report::new(e)))?;
                    }
                }
                code = exit => {
                    self.running = None;
                    match code {
                        Ok(code) => say(&format!("the container exited with code {code}; it restarts after the next change")),
                        Err(e) => crate::render_failure(run_failure(e)),
                    }
                }
                () = cancel.cancelled() => break,
            }
        }
        self.stop().await;
        Ok(())
    }

    /// One build (and restart). Returns the watch set to use next: the new
    /// one, or when the workspace does not load, the old one plus its files.
    async fn cycle(&mut self, first: Instant, changed: &BTreeSet<PathBuf>) -> Result<WatchSet, Failure> {
        if !changed.is_empty() {
            let cwd = std::env::current_dir().unwrap_or_default();
            let shown: Vec<String> =
                changed.iter().take(5).map(|p| p.strip_prefix(&cwd).unwrap_or(p).display().to_string()).collect();
            let more = if changed.len() > 5 { format!(" (+{} more)", changed.len() - 5) } else { String::new() };
            say(&format!("changed {}{more}", shown.join(", ")));
        }
        let ws = match load(self.file, &self.args.load) {
            Ok(ws) => ws,
            Err(failure) => {
                crate::render_failure(failure);
                say("build.kdl has errors: the last good build keeps running; fix it and save");
                return Ok(self.fallback_set());
            }
        };
        self.files = ws.files.iter().map(|f| f.path.clone()).collect();
        let set = match Plan::build(&ws, &self.args.targets) {
            Ok(plan) => WatchSet::new(&ws, &plan, &Self::excluded()),
            Err(e) => {
                crate::render_failure(Failure::from(e));
                return Ok(self.fallback_set());
            }
        };
        let built = self.engine.build(&ws, &self.args.targets, &self.options, &render).await;
        let report = match built {
            Ok(report) => report,
            Err(_) if self.options.cancel.is_cancelled() => return Ok(set),
            Err(e) => {
                crate::render_failure(exec_failure(e));
                say("the build failed: the last good build keeps running");
                return Ok(set);
            }
        };
        let build_ms = millis(first.elapsed());
        let after = if changed.is_empty() { "" } else { " after the change" };
        say(&format!(
            "built in {build_ms} ms{after}: {} ran, {} cached",
            crate::commands::count(report.executed, "step"),
            report.cached
        ));
        if let Some(image) = self.args.run.clone() {
            self.restart(&image, first, after).await;
        }
        Ok(set)
    }

    /// A watch set when the workspace does not load: the workspace's files
    /// as last loaded, so that fixing them starts a build.
    fn fallback_set(&self) -> WatchSet {
        let mut files = self.files.clone();
        files.push(self.file.to_path_buf());
        WatchSet::files(&files)
    }

    /// The store never triggers a build.
    fn excluded() -> Vec<PathBuf> {
        crate::commands::home().map(|h| vec![h.root().to_path_buf()]).unwrap_or_default()
    }

    /// Starts the image when it is new or changed, stopping the old one first.
    async fn restart(&mut self, image: &str, first: Instant, after: &str) {
        let env = self.args.env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
        let options = RunOptions { args: self.args.args.clone(), env, ..RunOptions::default() };
        let container = match self.engine.container(image, &options, &render).await {
            Ok(c) => c,
            Err(e) => {
                crate::render_failure(run_failure(e));
                return;
            }
        };
        let digest = container.digest.to_string();
        if self.running.as_ref().is_some_and(|r| r.digest == digest) {
            say(&format!("{image} is unchanged: the container keeps running"));
            return;
        }
        let stopping = Instant::now();
        let stopped = self.stop().await;
        match self.start(container) {
            Ok(()) => {
                let short = digest.get(..19).unwrap_or(&digest);
                let ready = millis(first.elapsed());
                if stopped {
                    let stop = millis(stopping.elapsed());
                    say(&format!(
                        "restarted {image} {short} (the old one stopped in {stop} ms), ready {ready} ms{after}"
                    ));
                } else {
                    say(&format!("started {image} {short}, ready {ready} ms{after}"));
                }
            }
            Err(e) => crate::render_failure(run_failure(e)),
        }
    }

    fn start(&mut self, container: Container) -> Result<(), ContainerError> {
        let io = crate::terminal::container_io(false, false)
            .map_err(|e| ContainerError::Exec(bake_engine::exec::ExecError::Stdio(e)))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let digest = container.digest.to_string();
        let stop_signal = container.stop_signal.clone();
        let exit: Exit = Box::pin(async move { container.run(io, &mut rx).await });
        self.running = Some(Running { digest, stop_signal, control: tx, exit });
        Ok(())
    }

    /// Stops the running container: its stop signal, then a kill after the
    /// timeout. Returns whether there was one.
    async fn stop(&mut self) -> bool {
        let Some(mut running) = self.running.take() else { return false };
        let signal = bake_engine::sandbox::stop_signal(&running.stop_signal);
        let _ = running.control.send(Control::Signal(signal));
        let timeout = Duration::from_secs(self.args.stop_timeout);
        if tokio::time::timeout(timeout, &mut running.exit).await.is_err() {
            let _ = running.control.send(Control::Kill);
            let _ = running.exit.await;
        }
        true
    }
}
