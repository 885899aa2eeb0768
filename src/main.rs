//! The `ember` command line: parses arguments and hands them to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ember::export::Format;
use ember::record::{self, RecordOptions, What};
use ember::sample::Event;

#[derive(Parser)]
#[command(
    name = "ember",
    version,
    about = "A CPU profiler for Linux built on eBPF",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Profile processes, a command or the whole host, and write pprof + SVG.
    #[command(
        after_help = "Examples:\n  sudo ember record --pid 1234 --duration 30s\n  sudo ember record --all -d 10s -o host.svg\n  sudo ember record -- ./my-benchmark --args"
    )]
    Record(RecordArgs),
}

#[derive(clap::Args)]
struct RecordArgs {
    /// Profile this process and all its threads (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Profile every process on the host, kernel included.
    #[arg(short, long, conflicts_with = "pids")]
    all: bool,
    /// Stop after this long (30s, 2m, 1h); default: until Ctrl-C or the target exits.
    #[arg(short, long)]
    duration: Option<String>,
    /// Samples per second on each CPU.
    #[arg(short = 'F', long, default_value_t = 99, alias = "rate")]
    frequency: u64,
    /// Output file(s); the format follows the extension (.pb.gz, .svg, .folded).
    #[arg(short, long = "output", value_name = "PATH")]
    outputs: Vec<PathBuf>,
    /// Output format(s), written to their default file names unless --output says otherwise.
    #[arg(short, long = "format", value_enum)]
    formats: Vec<Format>,
    /// Leave kernel frames out.
    #[arg(long)]
    no_kernel: bool,
    /// Put a frame per thread under each process in folded and SVG output.
    #[arg(short, long)]
    threads: bool,
    /// Sampling event: the software cpu-clock (works everywhere) or hardware cycles (falls back to cpu-clock).
    #[arg(long, default_value = "cpu-clock", value_parser = ["cpu-clock", "cycles"])]
    event: String,
    /// Distinct (thread, stack) entries the kernel counts between drains.
    #[arg(long, default_value_t = 16384)]
    count_map_size: u32,
    /// Distinct stacks the kernel stores between drains.
    #[arg(long, default_value_t = 8192)]
    stack_map_size: u32,
    /// Do not show the progress line.
    #[arg(short, long)]
    quiet: bool,
    /// The command to run and profile, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Record(args) => record_cmd(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes as one sentence.
fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.join(": ")
}

fn record_cmd(a: RecordArgs) -> anyhow::Result<()> {
    let what = match (a.pids.is_empty(), a.all, a.command.is_empty()) {
        (false, false, true) => What::Pids(a.pids.clone()),
        (true, true, true) => What::All,
        (true, false, false) => What::Command(a.command.clone()),
        (true, false, true) => {
            anyhow::bail!("say what to profile: --pid PID, --all, or a command after --")
        }
        _ => anyhow::bail!("choose one of --pid, --all or a command after --, not several"),
    };
    let outputs = outputs(&a.outputs, &a.formats)?;
    let opts = RecordOptions {
        what,
        duration: a
            .duration
            .as_deref()
            .map(record::parse_duration)
            .transpose()?,
        frequency: a.frequency,
        event: if a.event == "cycles" {
            Event::Cycles
        } else {
            Event::CpuClock
        },
        outputs,
        kernel: !a.no_kernel,
        threads: a.threads,
        count_map_entries: a.count_map_size.max(64),
        stack_map_entries: a.stack_map_size.max(64),
        drain_interval: Duration::from_secs(2),
        progress: !a.quiet,
    };
    let rec = record::run(&opts)?;
    eprint!("{}", record::summary(&rec));
    Ok(())
}

/// Pairs formats with paths: explicit paths carry their format in the
/// extension; formats without a path get their default file name.
fn outputs(paths: &[PathBuf], formats: &[Format]) -> anyhow::Result<Vec<(Format, PathBuf)>> {
    let mut out = Vec::new();
    for p in paths {
        let f = match Format::from_path(p) {
            Some(f) => f,
            None if formats.len() == 1 && paths.len() == 1 => formats[0],
            None => anyhow::bail!(
                "cannot tell the format of {} from its name; end it in .pb.gz, .svg or .folded, or pass --format",
                p.display()
            ),
        };
        out.push((f, p.clone()));
    }
    for &f in formats {
        if !out.iter().any(|(g, _)| *g == f) {
            out.push((f, PathBuf::from(f.default_path())));
        }
    }
    if out.is_empty() {
        out.push((Format::Pprof, PathBuf::from(Format::Pprof.default_path())));
        out.push((Format::Svg, PathBuf::from(Format::Svg.default_path())));
    }
    Ok(out)
}
