//! The `bake` command line: arguments in, engine calls, rendering out.
//!
//! Only this crate prints, and only `main` decides the exit code, from the
//! failure's kind and its error's [`bake_engine::Tier`]: 0 success, 1 build
//! failed, 2 usage or configuration error, 70 a bug in bake (printed with a
//! request to report it), the environment's failures as a failed build for
//! now; 130 and 143 when a signal stopped it (the book's "Exit codes").

mod args;
mod commands;
mod doctor;
mod render;
mod terminal;
mod watch;

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::commands::Failure;

fn main() -> ExitCode {
    // The sandbox helper: bake re-executes itself for every `run` step.
    if std::env::args_os().nth(1).is_some_and(|a| a == bake_engine::sandbox::HELPER_ARG) {
        std::process::exit(bake_engine::sandbox::helper_main());
    }
    let cli = args::Cli::parse();
    // Not root: everything happens in a user namespace of bake's own (see
    // the engine's `sandbox::userns`), entered while bake has one thread.
    let entered = bake_engine::sandbox::enter_user_namespace();
    if let Some(warning) = entered.warning().filter(|_| cli.command.runs_steps()) {
        let _ = writeln!(std::io::stderr(), "warning: {warning}");
    }
    install_report_handler();
    match commands::run(cli, &entered) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let code = failure.exit_code();
            render_failure(failure);
            ExitCode::from(code)
        }
    }
}

/// Diagnostics: unicode frames, colour unless NO_COLOR or not a terminal,
/// width from COLUMNS when set (tests render at 80).
fn install_report_handler() {
    let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse::<usize>().ok());
    let _ = miette::set_hook(Box::new(move |_| {
        let mut opts = miette::MietteHandlerOpts::new().unicode(true).terminal_links(false).context_lines(1);
        if let Some(w) = width {
            opts = opts.width(w);
        }
        Box::new(opts.build())
    }));
}

pub(crate) fn render_failure(failure: Failure) {
    let mut err = std::io::stderr().lock();
    let _ = match failure {
        Failure::Load(load) => {
            let summary = format!("bake: {load}");
            for e in load.errors {
                let _ = writeln!(err, "{:?}", miette::Report::new(e));
            }
            writeln!(err, "{summary}")
        }
        Failure::BuildMany(reports, summary) => {
            for report in reports {
                let _ = writeln!(err, "{report:?}");
            }
            writeln!(err, "{summary}")
        }
        Failure::Usage(report) | Failure::Build(report) | Failure::Environment(report) | Failure::Run(report, _) => {
            writeln!(err, "{report:?}")
        }
        Failure::Bug(report) => writeln!(
            err,
            "{report:?}\nbake: this is a bug in bake. Please report it on {}, with the command, `bake --version` and the output above.",
            commands::REPORT_BUGS
        ),
        Failure::Exit(_) => Ok(()),
    };
}

/// Writes to stdout; a closed pipe (`bake graph | head`) is not an error.
pub(crate) fn out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
