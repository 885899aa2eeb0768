//! The `ember` command line: parses arguments and hands them to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ember::export::Format;
use ember::record::{self, RecordOptions, What};
use ember::sample::Event;
use ember::util::{self, limits};

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
    /// Run the always-on host daemon: profile everything, keep windows locally, serve and push them.
    #[command(
        after_help = "Examples:\n  ember agent --config /etc/ember/agent.toml\n  ember agent --store-dir /tmp/ember --http-listen 127.0.0.1:6060 --push-pyroscope http://pyroscope:4040\n  ember agent --config agent.toml --check-config"
    )]
    Agent(AgentArgs),
    /// Merge stored agent windows into one profile.
    #[command(
        after_help = "Examples:\n  ember query --since 10m --format svg > last10m.svg\n  ember query --since 1h --service nginx -o nginx.pb.gz\n  ember query --since 5m --pid 1234 --label container_id=3f2a... -f folded"
    )]
    Query(QueryArgs),
    /// Show the functions burning CPU live, refreshed every second.
    #[command(
        after_help = "Keys: s sort by self/total, / filter by name (Enter applies, Esc cancels), k hide/show kernel frames,\n      t per-thread rows, p or space pause, q or Ctrl-C quit.\nWhen standard output is not a terminal, the table is printed as plain text (every second, or once at the end with --duration).\n\nExamples:\n  sudo ember top --pid 1234\n  sudo ember top --all --window 30s\n  sudo ember top --pid 1234 --duration 10s > top.txt\n  sudo ember top -- ./my-benchmark --args"
    )]
    Top(TopArgs),
    /// Compare two profiles: a differential flamegraph, folded lines or a table of what changed.
    #[command(
        after_help = "Red frames grew, blue ones shrank, white ones did not change; widths are AFTER's. Shares are compared (BEFORE is scaled to AFTER's total) unless --absolute.\n\nExamples:\n  ember diff before.pb.gz after.pb.gz -o diff.svg\n  ember diff before.pb.gz after.pb.gz -f text"
    )]
    Diff(DiffCmdArgs),
    /// Build the unwind tables of every binary mapped by running processes and report their size and build time.
    #[command(after_help = "Examples:\n  ember tables\n  ember tables --pid 1234 --verbose")]
    Tables(TablesArgs),
}

#[derive(clap::Args)]
struct TopArgs {
    /// Profile this process and all its threads (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Profile every process on the host, kernel included.
    #[arg(short, long, conflicts_with = "pids")]
    all: bool,
    /// The sliding window the shares are over (1s to 1h).
    #[arg(short, long, default_value = "10s")]
    window: String,
    /// Stop after this long; default: until q, Ctrl-C or the target exits.
    #[arg(short, long)]
    duration: Option<String>,
    /// Samples per second on each CPU.
    #[arg(short = 'F', long, default_value_t = 99)]
    frequency: u64,
    /// Do not capture kernel stacks at all (the k key only hides them).
    #[arg(long)]
    no_kernel: bool,
    /// Start with one row per function and thread.
    #[arg(short, long)]
    threads: bool,
    /// Start sorted by total instead of self samples.
    #[arg(long)]
    sort_total: bool,
    /// Start with this name filter.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Rows printed in plain-text mode.
    #[arg(short = 'n', long, default_value_t = 30)]
    rows: usize,
    /// Plain text even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Walk user stacks with frame pointers only (no unwind tables).
    #[arg(long)]
    frame_pointers: bool,
    /// Also look for separate debug files by build ID in DIR/.build-id/ (repeatable).
    #[arg(long, value_name = "DIR")]
    debug_dir: Vec<PathBuf>,
    /// Which build of the BPF program to load: auto (the newest the kernel
    /// supports), modern (Linux 5.17+) or compat (Linux 5.10-5.16).
    #[arg(long, default_value = "auto", value_name = "VARIANT")]
    bpf_variant: String,
    /// The command to run and profile, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct DiffCmdArgs {
    /// The baseline profile (pprof, gzip-compressed or not).
    before: PathBuf,
    /// The profile compared with it.
    after: PathBuf,
    /// Output file (default: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// svg, folded (stack BEFORE AFTER) or text (default: from --output's extension, else svg).
    #[arg(short, long)]
    format: Option<ember::view::diff::DiffFormat>,
    /// Compare raw sample counts instead of shares.
    #[arg(long)]
    absolute: bool,
}

#[derive(clap::Args)]
struct TablesArgs {
    /// Only the binaries of this process (repeatable); default: every process.
    #[arg(short, long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// One line per binary.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// TOML config file (see deploy/agent.toml); flags override it.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Validate the config, print the effective config and exit.
    #[arg(long)]
    check_config: bool,
    /// Samples per second per CPU (default 19).
    #[arg(short = 'F', long)]
    frequency: Option<u64>,
    /// Window length (default 15s).
    #[arg(short, long)]
    window: Option<String>,
    /// Directory of stored windows (default /var/lib/ember; "" disables).
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// Delete stored windows older than this (default 24h).
    #[arg(long)]
    retention: Option<String>,
    /// Keep the store under this size (default 1GiB).
    #[arg(long)]
    store_max_size: Option<String>,
    /// HTTP endpoint address (default 127.0.0.1:6060; "" disables).
    #[arg(long)]
    http_listen: Option<String>,
    /// Push to a Pyroscope server (Connect Push API), e.g. http://pyroscope:4040 (repeatable).
    #[arg(long)]
    push_pyroscope: Vec<String>,
    /// Push to a Parca server (gRPC WriteRaw), e.g. http://parca:7070 (repeatable).
    #[arg(long)]
    push_parca: Vec<String>,
    /// Node name for the `node` label (default: host name).
    #[arg(long)]
    node: Option<String>,
    /// Leave kernel frames out.
    #[arg(long)]
    no_kernel: bool,
    /// Also look for separate debug files by build ID in DIR/.build-id/
    /// (after /usr/lib/debug; repeatable; adds to the config's debug_dirs).
    #[arg(long, value_name = "DIR")]
    debug_dir: Vec<PathBuf>,
    /// Which build of the BPF program to load: auto, modern (Linux 5.17+)
    /// or compat (Linux 5.10-5.16); overrides the config's bpf_variant.
    #[arg(long, value_name = "VARIANT")]
    bpf_variant: Option<String>,
}

#[derive(clap::Args)]
struct QueryArgs {
    /// Agent config to take the store directory from.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Store directory (default: the config's, else /var/lib/ember).
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// How far back (10m, 1h...).
    #[arg(short, long, default_value = "10m")]
    since: String,
    /// Only this service_name.
    #[arg(long)]
    service: Option<String>,
    /// Only samples of this process.
    #[arg(short, long)]
    pid: Option<u32>,
    /// Only targets with this label (key=value; repeatable).
    #[arg(short, long = "label")]
    labels: Vec<String>,
    /// Output format: pprof, folded or svg (default: from --output's extension, else svg).
    #[arg(short, long)]
    format: Option<Format>,
    /// Output file (default: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Also merge a baseline as long as --since that starts this long ago,
    /// and write the difference (--since 1h --diff-since 2h: the last hour
    /// against the one before).
    #[arg(long, value_name = "DURATION")]
    diff_since: Option<String>,
    /// With --diff-since: svg, folded or text (default: from --output's extension, else svg).
    #[arg(long)]
    diff_format: Option<ember::view::diff::DiffFormat>,
    /// With --diff-since: compare raw sample counts instead of shares.
    #[arg(long)]
    absolute: bool,
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
    #[arg(short, long = "format")]
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
    /// Walk user stacks with frame pointers only (no unwind tables).
    #[arg(long)]
    frame_pointers: bool,
    /// Kernel memory the unwind tables may take, in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    unwind_memory: u64,
    /// Also look for separate debug files by build ID in DIR/.build-id/
    /// (after /usr/lib/debug; repeatable).
    #[arg(long, value_name = "DIR")]
    debug_dir: Vec<PathBuf>,
    /// Most user frames walked with unwind tables (1 to 512; frame
    /// pointers alone stop at the kernel's 127).
    #[arg(long, default_value_t = 512, value_name = "FRAMES")]
    max_depth: u32,
    /// Do not fetch missing debug files from DEBUGINFOD_URLS.
    #[arg(long)]
    no_debuginfod: bool,
    /// Do not walk Python frames (CPython 3.8-3.13 processes then show
    /// their interpreter's native frames only).
    #[arg(long)]
    no_python: bool,
    /// Also record off-CPU time: where threads wait (sleep, locks, pipes,
    /// sockets, disk), as the pprof sample type `off_cpu`.
    #[arg(long)]
    off_cpu: bool,
    /// Waits shorter than this are not recorded (with --off-cpu).
    #[arg(long, default_value = "4us", value_name = "DURATION")]
    off_cpu_threshold: String,
    /// Record one wait in N, scaled by N (with --off-cpu).
    #[arg(long, default_value_t = 1, value_name = "N")]
    off_cpu_sample: u32,
    /// Write a wall-clock view per thread (CPU + off-CPU time) in folded
    /// and SVG outputs; implies --off-cpu and --threads.
    #[arg(long)]
    wall: bool,
    /// What folded and SVG outputs show: cpu (default), off-cpu or wall.
    #[arg(long, value_name = "TYPE")]
    sample_type: Option<String>,
    /// How long to wait for debuginfod after sampling ends (then the
    /// files are written with what is there).
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    debuginfod_timeout: String,
    /// Which build of the BPF program to load: auto (the newest the kernel
    /// supports), modern (Linux 5.17+) or compat (Linux 5.10-5.16).
    #[arg(long, default_value = "auto", value_name = "VARIANT")]
    bpf_variant: String,
    /// The command to run and profile, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    // One descriptor per binary symbolized: use what the hard limit allows.
    ember::untrusted::raise_fd_limit();
    let result = match cli.command {
        Cmd::Record(args) => record_cmd(args),
        Cmd::Agent(args) => agent_cmd(args),
        Cmd::Query(args) => query_cmd(args),
        Cmd::Tables(args) => tables_cmd(args),
        Cmd::Top(args) => top_cmd(args),
        Cmd::Diff(args) => ember::diff::run(&ember::diff::DiffArgs {
            before: args.before,
            after: args.after,
            output: args.output,
            format: args.format,
            absolute: args.absolute,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap writes them; a usage error becomes one
/// line, like every other ember error.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // clap's tips ("a similar subcommand exists: 'record'") stay, inline.
    let tips: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
        .collect();
    let tips = if tips.is_empty() {
        String::new()
    } else {
        format!(" ({})", ember::util::printable(&tips.join("; "), 300))
    };
    eprintln!(
        "ember: {}{tips}; see --help",
        ember::util::printable(first, 300).trim_end_matches('.'),
    );
    ExitCode::from(2)
}

/// The error and its causes as one sentence.
fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.join(": ")
}

fn tables_cmd(a: TablesArgs) -> anyhow::Result<()> {
    ember::tables::run(&a.pids, a.verbose, &mut std::io::stdout().lock())
}

/// What to profile, from --pid, --all and a command after `--`.
fn what(pids: &[u32], all: bool, command: &[String]) -> anyhow::Result<What> {
    Ok(match (pids.is_empty(), all, command.is_empty()) {
        (false, false, true) => What::Pids(pids.to_vec()),
        (true, true, true) => What::All,
        (true, false, false) => What::Command(command.to_vec()),
        (true, false, true) => {
            anyhow::bail!("say what to profile: --pid PID, --all, or a command after --")
        }
        _ => anyhow::bail!("choose one of --pid, --all or a command after --, not several"),
    })
}

fn top_cmd(a: TopArgs) -> anyhow::Result<()> {
    let what = what(&a.pids, a.all, &a.command)?;
    let window = util::duration_in(
        &format!("--window {}", util::quote(&a.window)),
        &a.window,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    )?;
    let duration = a
        .duration
        .as_deref()
        .map(|d| {
            util::duration_in(
                &format!("--duration {}", util::quote(d)),
                d,
                limits::RECORD_DURATION.0,
                limits::RECORD_DURATION.1,
            )
        })
        .transpose()?;
    if !(1..=10_000).contains(&a.rows) {
        anyhow::bail!("--rows {} is out of range; use 1 to 10000", a.rows);
    }
    ember::top::run(&ember::top::TopOptions {
        bpf_variant: ember::sample::Variant::parse(&a.bpf_variant)
            .map_err(|e| anyhow::anyhow!("--bpf-variant: {e}"))?,
        what,
        window,
        duration,
        frequency: a.frequency,
        kernel: !a.no_kernel,
        threads: a.threads,
        sort: if a.sort_total {
            ember::view::table::Sort::Total
        } else {
            ember::view::table::Sort::SelfTime
        },
        filter: a.filter.unwrap_or_default(),
        limit: a.rows,
        plain: a.plain,
        unwind_tables: !a.frame_pointers,
        unwind_memory: 256 << 20,
        debug_dirs: a.debug_dir,
    })
}

fn record_cmd(a: RecordArgs) -> anyhow::Result<()> {
    let what = what(&a.pids, a.all, &a.command)?;
    let outputs = outputs(&a.outputs, &a.formats)?;
    let (lo, hi) = (limits::UNWIND_MEMORY.0 >> 20, limits::UNWIND_MEMORY.1 >> 20);
    if !(lo..=hi).contains(&a.unwind_memory) {
        anyhow::bail!(
            "--unwind-memory {} is out of range; use {lo} to {hi} (MiB)",
            a.unwind_memory
        );
    }
    let sample_type: ember::export::SampleType = match (&a.sample_type, a.wall) {
        (Some(t), _) => t
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--sample-type: {e}"))?,
        (None, true) => ember::export::SampleType::Wall,
        (None, false) => ember::export::SampleType::Cpu,
    };
    let wants_off = a.off_cpu || a.wall || sample_type != ember::export::SampleType::Cpu;
    let off_cpu = if wants_off {
        if !(1..=1_000_000).contains(&a.off_cpu_sample) {
            anyhow::bail!(
                "--off-cpu-sample {} is out of range; use 1 to 1000000",
                a.off_cpu_sample
            );
        }
        Some(ember::sample::OffCpu {
            threshold: if a.off_cpu_threshold.trim() == "0" {
                Duration::ZERO
            } else {
                util::duration_in(
                    "--off-cpu-threshold",
                    &a.off_cpu_threshold,
                    Duration::ZERO,
                    Duration::from_secs(3600),
                )?
            },
            sample: a.off_cpu_sample,
        })
    } else {
        None
    };
    let opts = RecordOptions {
        what,
        duration: a
            .duration
            .as_deref()
            .map(|d| {
                util::duration_in(
                    &format!("--duration {}", util::quote(d)),
                    d,
                    limits::RECORD_DURATION.0,
                    limits::RECORD_DURATION.1,
                )
            })
            .transpose()?,
        frequency: a.frequency,
        event: if a.event == "cycles" {
            Event::Cycles
        } else {
            Event::CpuClock
        },
        outputs,
        kernel: !a.no_kernel,
        threads: a.threads || a.wall,
        count_map_entries: a.count_map_size,
        stack_map_entries: a.stack_map_size,
        // Often enough that Python code objects are read before their
        // processes exit.
        drain_interval: Duration::from_millis(500),
        progress: !a.quiet,
        unwind_tables: !a.frame_pointers,
        unwind_memory: a.unwind_memory << 20,
        debug_dirs: a.debug_dir.clone(),
        max_depth: a.max_depth,
        python: !a.no_python,
        off_cpu,
        sample_type,
        bpf_variant: ember::sample::Variant::parse(&a.bpf_variant)
            .map_err(|e| anyhow::anyhow!("--bpf-variant: {e}"))?,
        debuginfod_timeout: if a.no_debuginfod {
            None
        } else {
            Some(util::duration_in(
                "--debuginfod-timeout",
                &a.debuginfod_timeout,
                Duration::from_millis(1),
                Duration::from_secs(600),
            )?)
        },
    };
    for (flag, v, (lo, hi)) in [
        ("--count-map-size", a.count_map_size, limits::COUNT_MAP),
        ("--stack-map-size", a.stack_map_size, limits::STACK_MAP),
        ("--max-depth", a.max_depth, limits::MAX_DEPTH),
    ] {
        if !(lo..=hi).contains(&v) {
            anyhow::bail!("{flag} {v} is out of range; use {lo} to {hi}");
        }
    }
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

fn agent_config(config: Option<&std::path::Path>) -> anyhow::Result<ember::agent::config::Config> {
    Ok(match config {
        Some(p) => ember::agent::config::load(p)?,
        None => Default::default(),
    })
}

fn agent_cmd(a: AgentArgs) -> anyhow::Result<()> {
    use ember::agent::config::PushConfig;
    let mut c = agent_config(a.config.as_deref())?;
    if let Some(f) = a.frequency {
        c.frequency = f;
    }
    if let Some(w) = a.window {
        c.window = w;
    }
    if let Some(d) = a.store_dir {
        c.store.dir = d;
    }
    if let Some(r) = a.retention {
        c.store.retention = r;
    }
    if let Some(m) = a.store_max_size {
        c.store.max_size = m;
    }
    if let Some(l) = a.http_listen {
        c.http.listen = l;
    }
    if let Some(n) = a.node {
        c.node = Some(n);
    }
    c.debug_dirs.extend(a.debug_dir.iter().cloned());
    if a.no_kernel {
        c.kernel = false;
    }
    if let Some(v) = a.bpf_variant {
        c.bpf_variant = v;
    }
    let push = |kind: &str, url: String| PushConfig {
        kind: kind.into(),
        url,
        tenant: None,
        basic_auth_user: None,
        basic_auth_password_file: None,
        bearer_token_file: None,
        headers: Default::default(),
        ca_file: None,
        timeout: "10s".into(),
        gzip: true,
    };
    c.push
        .extend(a.push_pyroscope.into_iter().map(|u| push("pyroscope", u)));
    c.push
        .extend(a.push_parca.into_iter().map(|u| push("parca", u)));
    let settings = c.validate()?;
    if a.check_config {
        // Header values may be credentials: never printed.
        print!("{}", settings.redacted_toml()?);
        eprintln!("ember: the configuration is valid");
        return Ok(());
    }
    ember::agent::run(settings)
}

fn query_cmd(a: QueryArgs) -> anyhow::Result<()> {
    let store_dir = match (a.store_dir, &a.config) {
        (Some(d), _) => d,
        (None, Some(_)) => agent_config(a.config.as_deref())?.store.dir,
        (None, None) => PathBuf::from("/var/lib/ember"),
    };
    ember::query::run(&ember::query::QueryOptions {
        store_dir,
        since: a.since,
        service: a.service,
        pid: a.pid,
        labels: a.labels,
        format: a.format,
        output: a.output,
        diff_since: a.diff_since,
        diff_format: a.diff_format,
        absolute: a.absolute,
    })
}
