//! `ember top`: a live view of the functions burning CPU, refreshed every
//! second over a sliding window of the last few seconds. It drives the one
//! capture session `ember record` drives ([`Capture`], with the same
//! target rules from [`watch`](crate::watch)), builds a profile of the
//! window each refresh and shows its function table
//! ([`view::table`](crate::view::table)).
//!
//! On a terminal it is a full-screen view (ratatui over crossterm, in the
//! alternate screen, restored on every way out: `q`, Ctrl-C, SIGTERM, the
//! target exiting, an error or a panic). When standard output is not a
//! terminal (or `TERM` is `dumb`), it prints the table as plain text: every
//! refresh, or once at the end with `--duration`.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};

use crate::aggregate::Aggregate;
use crate::capture::{Capture, CaptureConfig};
use crate::preflight;
use crate::profile::{self, BuildOptions, Profile};
use crate::sample::{self, Event};
use crate::view::table::{self, FunctionTable, Sort, TableOptions};
use crate::watch::{describe, targets, Target, What};

/// How often the view is refreshed (and the kernel maps drained).
pub const REFRESH: Duration = Duration::from_secs(1);

/// How long the loop waits for process events at most: it also paces the
/// key reads.
const POLL: Duration = Duration::from_millis(50);

/// Everything `ember top` needs.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// What to profile.
    pub what: What,
    /// The sliding window the shares are over.
    pub window: Duration,
    /// Stop after this long; `None` runs until `q`, Ctrl-C or the target exits.
    pub duration: Option<Duration>,
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Capture kernel stacks (the `k` key then only hides them).
    pub kernel: bool,
    /// Start with per-thread rows.
    pub threads: bool,
    /// Start sorted this way.
    pub sort: Sort,
    /// Start with this name filter.
    pub filter: String,
    /// Rows printed in plain-text mode.
    pub limit: usize,
    /// Plain text even on a terminal.
    pub plain: bool,
    /// Walk user stacks with unwind tables (else frame pointers only).
    pub unwind_tables: bool,
    /// Kernel memory the unwind tables may take, in bytes.
    pub unwind_memory: u64,
    /// More directories with separate debug files by build ID.
    pub debug_dirs: Vec<PathBuf>,
    /// Which build of the BPF program to load.
    pub bpf_variant: sample::Variant,
}

/// What the user controls with keys.
#[derive(Debug, Clone)]
struct ViewState {
    sort: Sort,
    filter: String,
    /// The filter being typed after `/`, until Enter or Esc.
    editing: Option<String>,
    kernel: bool,
    threads: bool,
    paused: bool,
}

impl ViewState {
    fn options(&self) -> TableOptions {
        TableOptions {
            kernel: self.kernel,
            threads: self.threads,
        }
    }

    /// The filter in effect: the one being typed, else the applied one.
    fn needle(&self) -> &str {
        self.editing.as_deref().unwrap_or(&self.filter)
    }
}

/// Checks what can be checked before sampling starts.
fn preflight(o: &TopOptions) -> Result<()> {
    if !(1..=100_000).contains(&o.frequency) {
        bail!(
            "--frequency {} is out of range; use 1 to 100000 Hz (99 is a good default)",
            o.frequency
        );
    }
    if o.window < REFRESH || o.window > Duration::from_secs(3600) {
        bail!("--window must be between 1s and 1h");
    }
    preflight::check_privileges()?;
    preflight::check_btf()?;
    if let What::Pids(pids) = &o.what {
        for &p in pids {
            preflight::check_pid(p)?;
        }
    }
    Ok(())
}

/// The last window's drains, newest last, each stamped with its time.
#[derive(Default)]
struct Window {
    drains: VecDeque<(Instant, Aggregate)>,
    merged: Aggregate,
}

impl Window {
    fn push(&mut self, agg: Aggregate, keep: Duration) {
        let now = Instant::now();
        self.drains.push_back((now, agg));
        while self
            .drains
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > keep)
        {
            self.drains.pop_front();
        }
    }

    /// Every drain of the window merged.
    fn merged(&mut self) -> &Aggregate {
        self.merged.clear();
        for (_, a) in &self.drains {
            self.merged.merge_from(a);
        }
        &self.merged
    }
}

/// Runs `ember top` until `q`, Ctrl-C, the duration or the target's exit.
pub fn run(o: &TopOptions) -> Result<()> {
    preflight(o)?;
    crate::signal::install();
    let mut cap = Capture::start(&CaptureConfig {
        sample: sample::Config {
            frequency: o.frequency,
            event: Event::CpuClock,
            targets: targets(&o.what),
            kernel_stacks: o.kernel,
            count_map_entries: 16384,
            stack_map_entries: 8192,
            unwind_tables: o.unwind_tables,
            max_user_depth: 512,
            python: true,
            off_cpu: None,
            variant: o.bpf_variant,
        },
        unwind_memory: o.unwind_tables.then_some(o.unwind_memory),
        kernel_mappings: !matches!(o.what, What::Pids(_)),
        debug_dirs: o.debug_dirs.clone(),
        debuginfod: None,
    })?;
    let interactive = !o.plain
        && std::io::stdout().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let mut view = ViewState {
        sort: o.sort,
        filter: o.filter.clone(),
        editing: None,
        kernel: true,
        threads: o.threads,
        paused: false,
    };
    let title = describe(&o.what);
    let mut target = Target::begin(&o.what, &mut cap)?;
    let mut tui = if interactive {
        Some(tui::Tui::enter()?)
    } else {
        None
    };
    let mut window = Window::default();
    let mut tick = Aggregate::default();
    let mut shown: Option<Profile> = None;
    let (mut last_refresh, mut last_gc) = (Instant::now(), Instant::now());
    let mut dirty = true;
    let stdout = std::io::stdout();
    loop {
        cap.wait(POLL, &mut |_| {});
        if last_gc.elapsed() >= o.window.max(Duration::from_secs(5)) {
            last_gc = Instant::now();
            // Processes found exited a window ago have left the window.
            cap.gc(true);
        }
        if target.done(o.duration)? {
            break;
        }
        if let Some(t) = tui.as_mut() {
            match t.keys(&mut view)? {
                tui::Action::Quit => break,
                tui::Action::Redraw => dirty = true,
                tui::Action::None => {}
            }
        }
        if cap.drain_if_due(&mut tick, REFRESH)? {
            window.push(std::mem::take(&mut tick), o.window);
        }
        if last_refresh.elapsed() >= REFRESH {
            last_refresh = Instant::now();
            if !view.paused {
                shown = Some(build(&mut cap, window.merged(), o, &title));
                dirty = true;
                if tui.is_none() && o.duration.is_none() {
                    let mut out = stdout.lock();
                    plain(
                        &mut out,
                        shown.as_ref(),
                        &view,
                        o,
                        &title,
                        target.start.elapsed(),
                    )?;
                    out.flush()?;
                }
            }
        }
        if dirty {
            dirty = false;
            if let Some(t) = tui.as_mut() {
                t.draw(shown.as_ref(), &view, o, &title, target.start.elapsed())?;
            }
        }
    }
    // Restore the terminal before anything else is printed.
    drop(tui);
    cap.finish(&mut tick, &mut |_| {})?;
    window.push(tick, o.window);
    if !interactive && o.duration.is_some() {
        let p = build(&mut cap, window.merged(), o, &title);
        let mut out = stdout.lock();
        plain(&mut out, Some(&p), &view, o, &title, target.start.elapsed())?;
        out.flush()?;
    }
    for n in target.finish() {
        eprintln!("ember: {n}");
    }
    Ok(())
}

/// Symbolizes the window's samples.
fn build(cap: &mut Capture, agg: &Aggregate, o: &TopOptions, title: &str) -> Profile {
    let (procs, sym) = cap.naming();
    profile::build(
        agg,
        procs,
        sym,
        &BuildOptions {
            start: SystemTime::now()
                .checked_sub(o.window)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            duration: o.window,
            frequency: o.frequency,
            target: title.to_string(),
            off_cpu: false,
        },
    )
}

/// The table the view shows of a profile.
fn view_table(p: Option<&Profile>, v: &ViewState) -> FunctionTable {
    let mut t = p
        .map(|p| table::functions(p, v.options()))
        .unwrap_or_default();
    t.sort(v.sort);
    t.filter(v.needle());
    t
}

/// What is shown: the target and window, then the view's state.
fn status_parts(
    samples: u64,
    v: &ViewState,
    o: &TopOptions,
    title: &str,
    span: Duration,
) -> (String, String) {
    let what = format!(
        "ember top: {} · last {} · {} samples at {} Hz",
        crate::util::printable(title, 200),
        crate::util::format_duration(span_of(o.window, span)),
        samples,
        o.frequency,
    );
    let mut state = format!("sorted by {}", v.sort.name());
    if !v.kernel {
        state.push_str(" · kernel frames hidden");
    }
    if v.threads {
        state.push_str(" · per thread");
    }
    if !v.needle().is_empty() {
        state.push_str(&format!(
            " · filter {:?}",
            crate::util::printable(v.needle(), 100)
        ));
    }
    (what, state)
}

/// The one-line description of what is shown.
fn status(samples: u64, v: &ViewState, o: &TopOptions, title: &str, span: Duration) -> String {
    let (what, state) = status_parts(samples, v, o, title, span);
    format!("{what} · {state}")
}

/// The time the shown samples cover: the window, or less while sampling
/// has run for less, in whole seconds.
fn span_of(window: Duration, running: Duration) -> Duration {
    Duration::from_secs(window.min(running).as_secs().max(1))
}

fn plain(
    w: &mut impl Write,
    p: Option<&Profile>,
    v: &ViewState,
    o: &TopOptions,
    title: &str,
    span: Duration,
) -> std::io::Result<()> {
    let t = view_table(p, v);
    writeln!(w, "{}", status(t.samples, v, o, title, span))?;
    write!(w, "{}", t.text(o.limit, 200))?;
    writeln!(w)
}

/// The full-screen view.
mod tui {
    use std::time::Duration;

    use anyhow::Result;
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::text::Line;
    use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
    use ratatui::DefaultTerminal;

    use super::{status_parts, view_table, TopOptions, ViewState};
    use crate::profile::Profile;

    /// What a key asks for.
    pub enum Action {
        None,
        Redraw,
        Quit,
    }

    /// The terminal in raw mode and the alternate screen; dropping it
    /// restores the terminal (ratatui's panic hook does on a panic).
    pub struct Tui {
        term: DefaultTerminal,
    }

    impl Tui {
        pub fn enter() -> Result<Tui> {
            let term = ratatui::try_init().map_err(|e| {
                // Raw mode may be on already.
                ratatui::restore();
                anyhow::anyhow!(
                    "cannot take over the terminal ({e}); pipe the output (ember top ... | cat) for plain text"
                )
            })?;
            Ok(Tui { term })
        }

        /// Applies the keys pressed since the last call.
        pub fn keys(&mut self, v: &mut ViewState) -> Result<Action> {
            let mut action = Action::None;
            while event::poll(Duration::ZERO)? {
                let key = match event::read()? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => k,
                    Event::Resize(..) => {
                        action = Action::Redraw;
                        continue;
                    }
                    _ => continue,
                };
                if key.modifiers.contains(KeyModifiers::CONTROL)
                    && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d'))
                {
                    return Ok(Action::Quit);
                }
                action = Action::Redraw;
                if let Some(text) = v.editing.as_mut() {
                    match key.code {
                        KeyCode::Enter => v.filter = v.editing.take().unwrap_or_default(),
                        KeyCode::Esc => v.editing = None,
                        KeyCode::Backspace => {
                            text.pop();
                        }
                        KeyCode::Char(c) if !c.is_control() && text.chars().count() < 200 => {
                            text.push(c)
                        }
                        _ => {}
                    }
                    continue;
                }
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(Action::Quit),
                    KeyCode::Char('s') => v.sort = v.sort.toggle(),
                    KeyCode::Char('/') => v.editing = Some(String::new()),
                    KeyCode::Char('k') => v.kernel = !v.kernel,
                    KeyCode::Char('t') => v.threads = !v.threads,
                    KeyCode::Char('p') | KeyCode::Char(' ') => v.paused = !v.paused,
                    _ => {}
                }
            }
            Ok(action)
        }

        pub fn draw(
            &mut self,
            p: Option<&Profile>,
            v: &ViewState,
            o: &TopOptions,
            title: &str,
            elapsed: Duration,
        ) -> Result<()> {
            let t = view_table(p, v);
            self.term.draw(|f| {
                let area = f.area();
                if area.height < 5 || area.width < 20 {
                    f.render_widget(
                        Paragraph::new("enlarge the terminal (ember top)")
                            .wrap(Wrap { trim: true }),
                        area,
                    );
                    return;
                }
                let [head, state_area, body, foot] = Layout::vertical([
                    Constraint::Length(1),
                    Constraint::Length(1),
                    Constraint::Min(1),
                    Constraint::Length(1),
                ])
                .areas(area);
                let (what, mut state) = status_parts(t.samples, v, o, title, elapsed);
                if v.paused {
                    state.insert_str(0, "PAUSED · ");
                }
                f.render_widget(
                    Paragraph::new(format!("{what} · up {}s", elapsed.as_secs()))
                        .style(Style::new().add_modifier(Modifier::REVERSED)),
                    head,
                );
                f.render_widget(Paragraph::new(state), state_area);
                // Narrow terminals drop the counts, then the thread column.
                let wide = area.width >= 60;
                let threads = v.threads && area.width >= 50;
                let mut header = vec!["SELF%"];
                let mut widths = vec![Constraint::Length(6)];
                if wide {
                    header.push("SELF");
                    widths.push(Constraint::Length(8));
                }
                header.push("TOTAL%");
                widths.push(Constraint::Length(6));
                if wide {
                    header.push("TOTAL");
                    widths.push(Constraint::Length(8));
                }
                if threads {
                    header.push("THREAD");
                    widths.push(Constraint::Length(20));
                }
                header.push("FUNCTION");
                widths.push(Constraint::Fill(1));
                let rows = t.rows.iter().take(body.height as usize).map(|r| {
                    let mut cells = vec![Cell::from(format!("{:5.1}", t.share(r.self_samples)))];
                    if wide {
                        cells.push(Cell::from(format!("{:>8}", r.self_samples)));
                    }
                    cells.push(Cell::from(format!("{:5.1}", t.share(r.total_samples))));
                    if wide {
                        cells.push(Cell::from(format!("{:>8}", r.total_samples)));
                    }
                    if threads {
                        cells.push(Cell::from(crate::util::printable(
                            r.thread.as_deref().unwrap_or(""),
                            40,
                        )));
                    }
                    let mut name = crate::util::printable(&r.name, 300);
                    if r.kernel {
                        name.push_str(" [k]");
                    }
                    cells.push(Cell::from(name));
                    Row::new(cells)
                });
                let table = Table::new(rows, widths)
                    .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
                    .column_spacing(1);
                f.render_widget(table, body);
                let help = match &v.editing {
                    Some(text) => format!(
                        "filter: {}_   (Enter apply, Esc cancel)",
                        crate::util::printable(text, 200)
                    ),
                    None => "s sort self/total  / filter  k kernel  t threads  p pause  q quit"
                        .to_string(),
                };
                f.render_widget(Line::from(help), foot);
            })?;
            Ok(())
        }
    }

    impl Drop for Tui {
        fn drop(&mut self) {
            ratatui::restore();
        }
    }
}
