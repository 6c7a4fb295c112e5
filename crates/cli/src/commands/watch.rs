//! `baton watch`: a live view of every device, replacing the seed's `watch -n 1 nvidia-smi`.
//!
//! In a terminal it draws, per device, a used/free bar and a history graph as tall as the
//! screen allows, then the process rows (ratatui) with, for baton's stages, their run and
//! stage, and every process's command line; `q`, `Esc` and Ctrl-C quit and the terminal is
//! restored, on a panic too. Readings are taken on their own thread, so a slow driver delays
//! the numbers, never the keys or the screen.
//! When stdout is not a terminal (a pipe, a log file) it prints one line per device per
//! reading instead, so the same command serves scripts. `--jsonl` appends every reading as one
//! JSON line, written whole, for later plots.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_base::format_bytes;
use baton_memory::{DeviceSnapshot, Opened};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Gauge, Paragraph, Row, Sparkline, Table};
use serde::Serialize;

use crate::BadInput;
use crate::args::WatchArgs;
use crate::commands::stats::header;

/// Readings kept per device for the history graph.
const HISTORY: usize = 600;

/// One line of `--jsonl`.
#[derive(Serialize)]
struct JsonlRecord<'a> {
    unix_ms: u128,
    backend: &'static str,
    devices: &'a [DeviceSnapshot],
}

pub fn watch(args: &WatchArgs) -> anyhow::Result<()> {
    let opened = baton_memory::open(args.device.device)?;
    // A bad -i fails before the screen is taken.
    args.device.select(opened.backend.snapshot()?)?;
    let mut jsonl = match &args.jsonl {
        Some(path) => Some(
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    BadInput(format!(
                        "cannot open --jsonl file '{}': {e}; choose a writable path",
                        path.display()
                    ))
                })?,
        ),
        None => None,
    };
    let mut tick = Ticker {
        opened: &opened,
        readings: collect(&opened, args),
        jsonl: jsonl.as_mut(),
        history: HashMap::new(),
        last: Err(String::new()),
        procs: HashMap::new(),
        count: 0,
    };
    if std::io::stdout().is_terminal() {
        let mut terminal = ratatui::try_init()?;
        let result = run_terminal(&mut terminal, &mut tick, args);
        ratatui::restore();
        result
    } else {
        run_plain(&mut tick, args, &mut std::io::stdout().lock())
    }
}

/// What the process rows say of a process beside its memory: for a baton stage its run and
/// stage (from the environment the runner gave it), and its command line.
#[derive(Clone, Default)]
struct ProcInfo {
    stage: String,
    command: String,
}

/// One reading, as the collecting thread hands it over.
struct Reading {
    devices: Result<Vec<DeviceSnapshot>, String>,
    procs: HashMap<u32, ProcInfo>,
}

/// Reads the devices every `interval` on a thread of its own, until the receiver goes.
fn collect(opened: &Opened, args: &WatchArgs) -> mpsc::Receiver<Reading> {
    let (tx, rx) = mpsc::sync_channel(1);
    let backend = opened.backend.clone();
    let interval = args.interval;
    let select = args.device.clone();
    std::thread::spawn(move || {
        loop {
            let due = Instant::now() + interval;
            let devices = backend
                .snapshot()
                .map_err(|e| e.to_string())
                .and_then(|all| select.select(all).map_err(|e| e.0));
            let procs = match &devices {
                Ok(devices) => devices
                    .iter()
                    .flat_map(|d| d.processes.iter().map(|p| p.pid))
                    .map(|pid| (pid, proc_info(pid)))
                    .collect(),
                Err(_) => HashMap::new(),
            };
            if tx.send(Reading { devices, procs }).is_err() {
                return;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    });
    rx
}

fn proc_info(pid: u32) -> ProcInfo {
    let stage = match baton_base::procfs::environ_vars(pid, ["BATON_RUN_ID", "BATON_STAGE"]) {
        // The stage first: the column cuts what does not fit, and a run's name is long.
        [Some(run), Some(stage)] => format!("{stage} · {run}"),
        [None, Some(stage)] => stage,
        _ => String::new(),
    };
    // The program by its file name (the column is narrow), then its arguments.
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .enumerate()
                .map(|(i, a)| {
                    let a = String::from_utf8_lossy(a).into_owned();
                    match i {
                        0 => a.rsplit('/').next().unwrap_or(&a).to_string(),
                        _ => a,
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    ProcInfo { stage, command }
}

/// Keeps what the views need from the readings.
struct Ticker<'a> {
    opened: &'a Opened,
    readings: mpsc::Receiver<Reading>,
    jsonl: Option<&'a mut File>,
    /// Used memory in tenths of a percent, per device UUID, oldest first.
    history: HashMap<String, VecDeque<u64>>,
    /// The last reading, or why it failed.
    last: Result<Vec<DeviceSnapshot>, String>,
    procs: HashMap<u32, ProcInfo>,
    count: u64,
}

impl Ticker<'_> {
    /// Takes in a reading.
    fn take(&mut self, reading: Reading) -> anyhow::Result<()> {
        self.count += 1;
        self.last = reading.devices;
        self.procs = reading.procs;
        let Ok(devices) = &self.last else {
            return Ok(());
        };
        for d in devices {
            let points = self.history.entry(d.uuid.clone()).or_default();
            if points.len() == HISTORY {
                points.pop_front();
            }
            points.push_back((d.used_percent() * 10.0).round() as u64);
        }
        if let Some(file) = self.jsonl.as_mut() {
            let record = JsonlRecord {
                unix_ms: SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis(),
                backend: self.opened.backend.kind().name(),
                devices,
            };
            let mut line = serde_json::to_vec(&record)?;
            line.push(b'\n');
            // One write per line, so a reader never sees half a record.
            file.write_all(&line)?;
        }
        Ok(())
    }

    /// Waits for the next reading.
    fn read(&mut self) -> anyhow::Result<()> {
        let reading = self
            .readings
            .recv()
            .map_err(|_| anyhow::anyhow!("the reading thread stopped"))?;
        self.take(reading)
    }

    fn done(&self, args: &WatchArgs) -> bool {
        args.ticks.is_some_and(|n| self.count >= n)
    }
}

fn run_plain(tick: &mut Ticker, args: &WatchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "{} (every {:?})", header(tick.opened), args.interval)?;
    let start = Instant::now();
    loop {
        tick.read()?;
        let at = start.elapsed().as_secs_f64();
        match &tick.last {
            Ok(devices) => {
                for d in devices {
                    writeln!(
                        out,
                        "t+{at:.1}s {} used {} / {} ({:.0}%), {} free, {} process(es)",
                        d.label(),
                        format_bytes(d.used),
                        format_bytes(d.total),
                        d.used_percent(),
                        format_bytes(d.free),
                        d.processes.len()
                    )?;
                }
            }
            Err(err) => writeln!(out, "t+{at:.1}s reading failed: {err}")?,
        }
        out.flush()?;
        if tick.done(args) {
            return Ok(());
        }
    }
}

fn run_terminal(
    terminal: &mut ratatui::DefaultTerminal,
    tick: &mut Ticker,
    args: &WatchArgs,
) -> anyhow::Result<()> {
    tick.read()?;
    terminal.draw(|frame| draw(frame, tick, args))?;
    loop {
        if tick.done(args) {
            return Ok(());
        }
        // Keys are answered at once; a reading is drawn when it comes.
        if event::poll(Duration::from_millis(25))? {
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                Event::Resize(..) => {
                    terminal.draw(|frame| draw(frame, tick, args))?;
                }
                _ => {}
            }
        }
        match tick.readings.try_recv() {
            Ok(reading) => {
                tick.take(reading)?;
                terminal.draw(|frame| draw(frame, tick, args))?;
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => {
                anyhow::bail!("the reading thread stopped")
            }
        }
    }
}

fn draw(frame: &mut Frame, tick: &Ticker, args: &WatchArgs) {
    let area = frame.area();
    let [top, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Line::from(header(tick.opened)).bold(), top);
    frame.render_widget(
        Line::from(format!(
            " q quit · every {:?} · reading {}{}",
            args.interval,
            tick.count,
            args.jsonl.as_ref().map_or(String::new(), |p| format!(
                " · appending to {}",
                p.display()
            ))
        ))
        .dim(),
        footer,
    );
    let devices = match &tick.last {
        Ok(devices) => devices,
        Err(err) => {
            frame.render_widget(
                Paragraph::new(format!("reading failed: {err}")).fg(Color::Red),
                body,
            );
            return;
        }
    };
    // The process table keeps room for its rows (up to a third of the screen); the devices
    // share the rest, each graph as tall as that allows (3 to 10 rows).
    let rows: usize = devices.iter().map(|d| d.processes.len()).sum();
    let table = (rows as u16 + 3).clamp(4, (body.height / 3).max(4));
    let each = (body.height.saturating_sub(table) / devices.len().max(1) as u16).clamp(5, 12);
    let mut constraints: Vec<Constraint> =
        devices.iter().map(|_| Constraint::Length(each)).collect();
    constraints.push(Constraint::Min(3));
    let areas = Layout::vertical(constraints).split(body);
    for (d, area) in devices.iter().zip(areas.iter()) {
        draw_device(frame, d, tick.history.get(&d.uuid), args.interval, *area);
    }
    draw_processes(frame, devices, &tick.procs, areas[areas.len() - 1]);
}

fn draw_device(
    frame: &mut Frame,
    d: &DeviceSnapshot,
    history: Option<&VecDeque<u64>>,
    interval: Duration,
    area: Rect,
) {
    let sensors = d.sensors.describe();
    let block = Block::bordered().title(if sensors.is_empty() {
        format!(" {} {} ", d.label(), d.name)
    } else {
        format!(" {} {} · {sensors} ", d.label(), d.name)
    });
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [bar, graph] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(inner);
    let ratio = if d.total == 0 {
        0.0
    } else {
        (d.used as f64 / d.total as f64).clamp(0.0, 1.0)
    };
    let color = match ratio {
        r if r >= 0.9 => Color::Red,
        r if r >= 0.7 => Color::Yellow,
        _ => Color::Green,
    };
    frame.render_widget(
        Gauge::default()
            .gauge_style(Style::new().fg(color))
            .ratio(ratio)
            .label(format!(
                "used {} / {} ({:.0}%) · free {}{}",
                format_bytes(d.used),
                format_bytes(d.total),
                ratio * 100.0,
                format_bytes(d.free),
                d.utilization
                    .map_or(String::new(), |u| format!(" · util {u}%"))
            )),
        bar,
    );
    let points: Vec<u64> = history.map_or_else(Vec::new, |h| {
        let width = graph.width.saturating_sub(14) as usize;
        h.iter()
            .skip(h.len().saturating_sub(width))
            .copied()
            .collect()
    });
    let span = interval.mul_f64(points.len() as f64);
    let [label, spark] =
        Layout::horizontal([Constraint::Length(14), Constraint::Min(1)]).areas(graph);
    frame.render_widget(
        Paragraph::new(format!("used, last\n{}", human_span(span))).dim(),
        label,
    );
    frame.render_widget(
        Sparkline::default()
            .data(&points)
            .max(1000)
            .style(Style::new().fg(color)),
        spark,
    );
}

fn draw_processes(
    frame: &mut Frame,
    devices: &[DeviceSnapshot],
    procs: &HashMap<u32, ProcInfo>,
    area: Rect,
) {
    let rows: Vec<Row> = devices
        .iter()
        .flat_map(|d| {
            d.processes.iter().map(move |p| {
                let info = procs.get(&p.pid).cloned().unwrap_or_default();
                let command = if info.command.is_empty() {
                    p.name.clone()
                } else {
                    info.command
                };
                Row::new(vec![
                    d.label(),
                    p.pid.to_string(),
                    p.bytes.map_or("unknown".to_string(), format_bytes),
                    info.stage,
                    command,
                ])
            })
        })
        .collect();
    let title = format!(" processes ({}) ", rows.len());
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(11),
                Constraint::Length(34),
                Constraint::Min(16),
            ],
        )
        .header(Row::new(["DEVICE", "PID", "MEMORY", "STAGE · RUN", "COMMAND"]).bold())
        .block(Block::bordered().title(title)),
        area,
    );
}

fn human_span(span: Duration) -> String {
    let secs = span.as_secs();
    if secs >= 120 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}
