//! Timelines: what each client saw (`client bench --timeline`), what a
//! server did (`server --trace`), and a picture of either (`client timeline
//! --svg`).
//!
//! Both are written in Chrome's trace-event format (the JSON that Perfetto
//! and `chrome://tracing` open): an object whose `traceEvents` are events
//! with a phase `ph`, a process `pid`, a thread `tid` and a time `ts` in
//! microseconds. Three kinds matter here: duration slices on one thread
//! (`X` with a `dur`, or a `B`/`E` pair), which nest like calls;
//! asynchronous slices (`b`/`e` with an `id`), which may overlap on one
//! thread (requests served by one loop); and instants (`i`), such as a
//! signal.
//!
//! From outside, a server in any language is one black box: each
//! benchmark connection is a "thread" of the trace, and each of its
//! requests a slice with four parts (connect, send, wait for the first
//! byte, receive the rest). Head-of-line blocking shows as `wait` slices
//! that line up across every client.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Most requests one `client bench --timeline` run records; past it the
/// file says how many it left out (a long run would otherwise hold every
/// request in memory).
pub const MAX_RECORDED_REQUESTS: usize = 200_000;

/// One request as a client saw it, in times since the run began.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The benchmark connection (one row of the timeline).
    pub client: usize,
    /// What was asked for.
    pub path: String,
    /// When the request began (a connect first, for a new connection).
    pub start: Duration,
    /// When the connection could first be written: the connect's end.
    pub connected: Option<Duration>,
    /// When the last byte of the request was written.
    pub sent: Option<Duration>,
    /// When the first byte of the response arrived.
    pub first_byte: Option<Duration>,
    /// When the response was complete, or the request failed.
    pub end: Duration,
    /// Body bytes of a correct response, or why the request failed.
    pub outcome: std::result::Result<u64, String>,
}

/// What one `client bench --timeline` run recorded.
#[derive(Debug, Default)]
pub struct Recording {
    /// Requests, in no particular order.
    pub requests: Vec<RequestRecord>,
    /// Requests not recorded because [`MAX_RECORDED_REQUESTS`] was reached.
    pub left_out: u64,
}

fn micros(at: Duration) -> String {
    format!("{:.3}", at.as_secs_f64() * 1e6)
}

impl Recording {
    /// The recording as trace-event JSON: a thread per client, each
    /// request an `X` slice holding its phases as nested `X` slices.
    pub fn to_json(&self, about: &str) -> String {
        let mut events: Vec<String> = Vec::new();
        let pid = 1;
        events.push(format!(
            r#"{{"ph":"M","pid":{pid},"tid":0,"ts":0,"name":"process_name","args":{{"name":{}}}}}"#,
            crate::json::string(about)
        ));
        let mut clients: Vec<usize> = self.requests.iter().map(|r| r.client).collect();
        clients.sort_unstable();
        clients.dedup();
        for client in clients {
            let tid = client + 1;
            events.push(format!(
                r#"{{"ph":"M","pid":{pid},"tid":{tid},"ts":0,"name":"thread_name","args":{{"name":"client {client}"}}}}"#
            ));
            events.push(format!(
                r#"{{"ph":"M","pid":{pid},"tid":{tid},"ts":0,"name":"thread_sort_index","args":{{"sort_index":{tid}}}}}"#
            ));
        }
        for request in &self.requests {
            let tid = request.client + 1;
            let outcome = match &request.outcome {
                Ok(bytes) => format!(r#""bytes":{bytes}"#),
                Err(why) => format!(r#""error":{}"#, crate::json::string(why)),
            };
            let name = if request.outcome.is_ok() { "request" } else { "request failed" };
            let slice = |name: &str, from: Duration, to: Duration, args: &str| {
                format!(
                    r#"{{"ph":"X","pid":{pid},"tid":{tid},"ts":{},"dur":{},"name":"{name}","cat":"client","args":{{{args}}}}}"#,
                    micros(from),
                    micros(to.saturating_sub(from)),
                )
            };
            events.push(slice(
                name,
                request.start,
                request.end,
                &format!(r#""path":{},{outcome}"#, crate::json::string(&request.path)),
            ));
            // The phases, each from the end of the one before.
            let marks = [
                ("connect", request.connected),
                ("send", request.sent),
                ("wait", request.first_byte),
                ("receive", request.first_byte.map(|_| request.end)),
            ];
            let mut from = request.start;
            for (phase, to) in marks {
                let Some(to) = to else { break };
                let to = to.clamp(from, request.end);
                if to > from {
                    events.push(slice(phase, from, to, ""));
                }
                from = to;
            }
        }
        if self.left_out > 0 {
            let last = self.requests.iter().map(|r| r.end).max().unwrap_or_default();
            events.push(format!(
                r#"{{"ph":"i","s":"g","pid":{pid},"tid":0,"ts":{},"name":"timeline full: {} requests not recorded","args":{{"left_out":{}}}}}"#,
                micros(last),
                self.left_out,
                self.left_out
            ));
        }
        format!(
            "{{\"displayTimeUnit\":\"ms\",\"otherData\":{{\"recorded_by\":\"client bench\",\"left_out\":{}}},\"traceEvents\":[\n{}\n]}}\n",
            self.left_out,
            events.join(",\n")
        )
    }

    /// Writes [`Recording::to_json`] to `path`.
    pub fn write(&self, path: &Path, about: &str) -> Result<()> {
        std::fs::write(path, self.to_json(about)).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// A trace read back: slices and instants per thread, asynchronous slices
/// per process.
#[derive(Debug, Default)]
pub struct Trace {
    /// Threads in the order they are drawn, with what happened on each.
    pub threads: Vec<Thread>,
    /// Asynchronous slices (requests in flight), by start time.
    pub async_slices: Vec<Slice>,
    /// Events in the file.
    pub events: usize,
    /// What the file says it left out (a cap reached), if anything.
    pub truncated: Option<String>,
}

/// One thread (or one benchmark client) of a trace.
#[derive(Debug, Default)]
pub struct Thread {
    /// `pid`/`tid` as written.
    pub key: (String, String),
    /// Its name, from a `thread_name` metadata event, or `tid N`.
    pub name: String,
    /// Where it sorts (`thread_sort_index`), then by first event.
    sort: (i64, f64),
    /// Its duration slices, with their nesting depth.
    pub slices: Vec<Slice>,
    /// Its instant events.
    pub instants: Vec<(f64, String)>,
}

/// A span of time with a name, in microseconds.
#[derive(Debug, Clone)]
pub struct Slice {
    /// What it was.
    pub name: String,
    /// Start, microseconds.
    pub start: f64,
    /// Length, microseconds.
    pub dur: f64,
    /// How deeply it nests in other slices of its thread (0: outermost).
    pub depth: usize,
    /// Its numeric arguments (`submitted`, `reaped`, `events`).
    pub args: Vec<(String, f64)>,
}

impl Slice {
    fn end(&self) -> f64 {
        self.start + self.dur
    }
}

fn key_of(value: Option<&serde_json::Value>) -> String {
    match value {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

impl Trace {
    /// Reads a trace-event file (the object form, or a bare array of events).
    pub fn load(path: &Path) -> Result<Trace> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Trace::parse(&text).with_context(|| format!("{} is not a trace-event file", path.display()))
    }

    /// Parses trace-event JSON; B/E pairs become slices, unpaired ones are an error.
    pub fn parse(text: &str) -> Result<Trace> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let events = match &value {
            serde_json::Value::Array(events) => events.clone(),
            serde_json::Value::Object(object) => match object.get("traceEvents") {
                Some(serde_json::Value::Array(events)) => events.clone(),
                _ => bail!("no \"traceEvents\" array"),
            },
            _ => bail!("neither an array of events nor an object with \"traceEvents\""),
        };
        let mut trace = Trace { events: events.len(), ..Trace::default() };
        let mut threads: HashMap<(String, String), Thread> = HashMap::new();
        let mut open: HashMap<(String, String), Vec<(String, f64)>> = HashMap::new();
        let mut open_async: HashMap<(String, String, String), (String, f64)> = HashMap::new();
        for (index, event) in events.iter().enumerate() {
            let field = |name: &str| event.get(name);
            let ph = field("ph").and_then(|v| v.as_str()).ok_or_else(|| anyhow!("event {index} has no \"ph\""))?;
            let name = field("name").and_then(|v| v.as_str()).unwrap_or("").to_string();
            let key = (key_of(field("pid")), key_of(field("tid")));
            let ts = field("ts").and_then(|v| v.as_f64());
            let thread = threads.entry(key.clone()).or_insert_with(|| Thread {
                key: key.clone(),
                name: format!("tid {}", key.1),
                sort: (i64::MAX, f64::INFINITY),
                ..Thread::default()
            });
            if ph != "M" {
                if let Some(ts) = ts {
                    thread.sort.1 = thread.sort.1.min(ts);
                }
            }
            match ph {
                "M" => {
                    let args = field("args");
                    match name.as_str() {
                        "thread_name" => {
                            if let Some(n) = args.and_then(|a| a.get("name")).and_then(|n| n.as_str()) {
                                thread.name = n.to_string();
                            }
                        }
                        "thread_sort_index" => {
                            if let Some(i) = args.and_then(|a| a.get("sort_index")).and_then(|n| n.as_i64()) {
                                thread.sort.0 = i;
                            }
                        }
                        _ => {}
                    }
                }
                "X" => {
                    let ts = ts.ok_or_else(|| anyhow!("event {index} ({name}) has no \"ts\""))?;
                    let dur = field("dur").and_then(|v| v.as_f64()).unwrap_or(0.0);
                    let args = field("args")
                        .and_then(|a| a.as_object())
                        .map(|a| a.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
                        .unwrap_or_default();
                    thread.slices.push(Slice { name, start: ts, dur, depth: 0, args });
                }
                "B" => {
                    let ts = ts.ok_or_else(|| anyhow!("event {index} ({name}) has no \"ts\""))?;
                    open.entry(key).or_default().push((name, ts));
                }
                "E" => {
                    let ts = ts.ok_or_else(|| anyhow!("event {index} has no \"ts\""))?;
                    let Some((begun, start)) = open.get_mut(&key).and_then(Vec::pop) else {
                        bail!("event {index}: an \"E\" on pid {} tid {} with no \"B\" open", key.0, key.1);
                    };
                    thread.slices.push(Slice {
                        name: begun,
                        start,
                        dur: (ts - start).max(0.0),
                        depth: 0,
                        args: vec![],
                    });
                }
                "b" | "e" => {
                    let ts = ts.ok_or_else(|| anyhow!("event {index} ({name}) has no \"ts\""))?;
                    let cat = field("cat").and_then(|v| v.as_str()).unwrap_or("").to_string();
                    let id = key_of(field("id").or(field("id2")));
                    let async_key = (key.0.clone(), cat, id);
                    if ph == "b" {
                        open_async.insert(async_key, (name, ts));
                    } else if let Some((begun, start)) = open_async.remove(&async_key) {
                        let slice = Slice { name: begun, start, dur: (ts - start).max(0.0), depth: 0, args: vec![] };
                        trace.async_slices.push(slice);
                    }
                }
                "i" | "I" | "n" => {
                    let ts = ts.ok_or_else(|| anyhow!("event {index} ({name}) has no \"ts\""))?;
                    if name.contains("not recorded") || name.contains("stopped recording") {
                        trace.truncated = Some(name.clone());
                    }
                    thread.instants.push((ts, name));
                }
                _ => {} // counters, flows, samples: not drawn
            }
        }
        if let Some(((pid, tid), stack)) = open.iter().find(|(_, stack)| !stack.is_empty()) {
            bail!("pid {pid} tid {tid}: \"{}\" begins and never ends", stack[0].0);
        }
        let mut threads: Vec<Thread> =
            threads.into_values().filter(|t| !t.slices.is_empty() || !t.instants.is_empty()).collect();
        for thread in &mut threads {
            nest(&mut thread.slices);
        }
        threads.sort_by(|a, b| a.sort.0.cmp(&b.sort.0).then(a.sort.1.total_cmp(&b.sort.1)));
        trace.threads = threads;
        trace.async_slices.sort_by(|a, b| a.start.total_cmp(&b.start));
        Ok(trace)
    }

    /// The earliest and latest time in the trace, microseconds.
    pub fn span(&self) -> (f64, f64) {
        let slices = self.threads.iter().flat_map(|t| t.slices.iter()).chain(&self.async_slices);
        let instants = self.threads.iter().flat_map(|t| t.instants.iter().map(|i| i.0));
        let starts = slices.clone().map(|s| s.start).chain(instants.clone());
        let ends = slices.map(Slice::end).chain(instants);
        let first = starts.fold(f64::INFINITY, f64::min);
        let last = ends.fold(f64::NEG_INFINITY, f64::max);
        if first.is_finite() {
            (first, last.max(first + 1.0))
        } else {
            (0.0, 1.0)
        }
    }

    /// The part of the trace where something happened: without a server's
    /// idle waits at either end (the loop waiting for a first client, or
    /// for the signal that stops it), unless nothing else is there.
    pub fn busy_span(&self) -> (f64, f64) {
        let idle = |slice: &&Slice| IDLE_SLICES.contains(&slice.name.as_str());
        let threads = self.threads.iter().flat_map(|t| t.slices.iter());
        // A server's requests say best when it was busy (its last turn, a
        // stop, comes after them); otherwise whatever is not a wait.
        let busy: Vec<&Slice> = if self.async_slices.is_empty() {
            threads.filter(|s| !idle(s)).collect()
        } else {
            self.async_slices.iter().collect()
        };
        let busy = busy.into_iter();
        let first = busy.clone().map(|s| s.start).fold(f64::INFINITY, f64::min);
        let last = busy.map(Slice::end).fold(f64::NEG_INFINITY, f64::max);
        if first.is_finite() && last > first {
            let margin = (last - first) * 0.02;
            let (whole_first, whole_last) = self.span();
            ((first - margin).max(whole_first), (last + margin).min(whole_last))
        } else {
            self.span()
        }
    }

    /// A few lines a person can read: per slice name, how many, the total
    /// and the longest; and the threads.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let (first, last) = self.span();
        let _ = writeln!(
            out,
            "{} events over {:.1} ms on {} threads; {} asynchronous slices",
            self.events,
            (last - first) / 1000.0,
            self.threads.len(),
            self.async_slices.len()
        );
        let mut by_name: BTreeMap<&str, (usize, f64, f64)> = BTreeMap::new();
        let slices = self.threads.iter().flat_map(|t| t.slices.iter()).chain(&self.async_slices);
        for slice in slices {
            let entry = by_name.entry(&slice.name).or_default();
            entry.0 += 1;
            entry.1 += slice.dur;
            entry.2 = entry.2.max(slice.dur);
        }
        let _ = writeln!(out, "{:<24} {:>8} {:>12} {:>12}", "slice", "count", "total ms", "longest ms");
        for (name, (count, total, longest)) in by_name {
            let _ = writeln!(out, "{name:<24} {count:>8} {:>12.3} {:>12.3}", total / 1000.0, longest / 1000.0);
        }
        // Numbers the slices carry (entries submitted and reaped per
        // io_uring_enter, events per epoll_wait): their mean and maximum.
        let mut numbers: BTreeMap<(&str, &str), (usize, f64, f64)> = BTreeMap::new();
        for slice in self.threads.iter().flat_map(|t| t.slices.iter()) {
            for (key, value) in slice.args.iter().filter(|(key, _)| key != "bytes") {
                let entry = numbers.entry((&slice.name, key)).or_default();
                entry.0 += 1;
                entry.1 += value;
                entry.2 = entry.2.max(*value);
            }
        }
        for ((name, key), (count, sum, most)) in numbers {
            let _ = writeln!(out, "{name}: {key} per slice: mean {:.1}, most {most}", sum / count as f64);
        }
        let instants: usize = self.threads.iter().map(|t| t.instants.len()).sum();
        if instants > 0 {
            let _ = writeln!(out, "instants: {instants}");
        }
        if let Some(truncated) = &self.truncated {
            let _ = writeln!(out, "truncated: {truncated}");
        }
        out
    }
}

/// Gives each slice its depth: slices of one thread nest (a slice that
/// begins inside another ends inside it), so a stack of open slices is
/// enough. Sorted by start, longest first at equal starts.
fn nest(slices: &mut [Slice]) {
    slices.sort_by(|a, b| a.start.total_cmp(&b.start).then(b.dur.total_cmp(&a.dur)));
    let mut stack: Vec<f64> = Vec::new();
    for slice in slices.iter_mut() {
        // Times written in µs with three decimals: a nanosecond of rounding is no overlap.
        while stack.last().is_some_and(|&end| end <= slice.start + 0.0015) {
            stack.pop();
        }
        slice.depth = stack.len();
        stack.push(slice.end());
    }
}

/// Slices that are a server waiting for something to do: left out of
/// [`Trace::busy_span`].
const IDLE_SLICES: [&str; 3] = ["turn", "wait", "submit and wait"];

/// Picture size and layout, pixels.
const WIDTH: u32 = 1000;
const LABEL_WIDTH: i32 = 130;
const RIGHT_MARGIN: i32 = 20;
const ROW_HEIGHT: i32 = 22;
const HEADER_HEIGHT: i32 = 44;
const FOOTER_HEIGHT: i32 = 56;
/// Most thread rows drawn; more are summed up in one line.
const MAX_ROWS: usize = 48;
/// Most rows of overlapping asynchronous slices (requests in flight)
/// drawn one bar each; more are drawn as a count.
const MAX_ASYNC_ROWS: usize = 8;

/// Colors given by name, in order of first appearance, so that the same
/// slice name has the same color in every picture of one trace.
struct Legend {
    names: Vec<String>,
}

impl Legend {
    fn color(&mut self, name: &str) -> RGBColor {
        // Well-known names keep a meaning across pictures: waiting is
        // grey-blue, blocking work red.
        let fixed = match name {
            "turn" => Some(RGBColor(225, 225, 225)),
            "wait" | "submit and wait" => Some(RGBColor(158, 202, 225)),
            "serve" => Some(RGBColor(116, 196, 118)),
            "handle" => Some(RGBColor(49, 130, 189)),
            "read" | "compute" => Some(RGBColor(214, 39, 40)),
            "request" => Some(RGBColor(199, 199, 199)),
            "request failed" => Some(RGBColor(0, 0, 0)),
            "receive" => Some(RGBColor(44, 160, 44)),
            "connect" => Some(RGBColor(255, 187, 120)),
            "send" => Some(RGBColor(148, 103, 189)),
            _ => None,
        };
        let position = match self.names.iter().position(|n| n == name) {
            Some(position) => position,
            None => {
                self.names.push(name.to_string());
                self.names.len() - 1
            }
        };
        fixed.unwrap_or(crate::chart::PALETTE[position % crate::chart::PALETTE.len()])
    }
}

/// A rectangle waiting to be drawn; neighbours narrower than a pixel are
/// merged, so a trace of a million slices is still a small picture.
struct Bar {
    x0: f64,
    x1: f64,
    y0: i32,
    y1: i32,
    color: RGBColor,
}

/// The bars to draw, in drawing order, and the last one at each height
/// and color (the one a thin neighbour may merge into).
#[derive(Default)]
struct Bars {
    list: Vec<Bar>,
    last_at: HashMap<Place, usize>,
}

/// Where a bar is drawn: its top, its bottom, its color.
type Place = (i32, i32, (u8, u8, u8));

fn push_bar(bars: &mut Bars, bar: Bar) {
    let place = (bar.y0, bar.y1, (bar.color.0, bar.color.1, bar.color.2));
    if let Some(last) = bars.last_at.get(&place).map(|&index| &mut bars.list[index]) {
        let both_thin = last.x1 - last.x0 < 2.0 && bar.x1 - bar.x0 < 2.0;
        if both_thin && bar.x0 <= last.x1 + 0.5 && bar.x0 >= last.x0 {
            last.x1 = last.x1.max(bar.x1);
            return;
        }
    }
    bars.last_at.insert(place, bars.list.len());
    bars.list.push(bar);
}

/// How to draw a trace.
#[derive(Debug, Clone, Default)]
pub struct Picture {
    /// The title above it.
    pub title: String,
    /// Draw the whole trace, idle waits at either end included (else
    /// [`Trace::busy_span`]).
    pub whole: bool,
    /// The time axis spans this many milliseconds, so that two pictures
    /// share a scale (default: what the trace spans).
    pub span_ms: Option<f64>,
}

/// A row of numbers the slices carry (`reaped` per `submit and wait`):
/// a bar per slice, at its end, as tall as its value against the largest.
struct NumberRow {
    label: String,
    bars: Vec<(f64, f64)>,
    most: f64,
}

fn number_rows(trace: &Trace) -> Vec<NumberRow> {
    let mut rows: BTreeMap<String, NumberRow> = BTreeMap::new();
    for slice in trace.threads.iter().flat_map(|t| t.slices.iter()) {
        // A client's body sizes say nothing about timing.
        for (key, value) in slice.args.iter().filter(|(key, _)| key != "bytes") {
            let label = format!("{}: {key}", slice.name);
            let row = rows.entry(label.clone()).or_insert(NumberRow { label, bars: Vec::new(), most: 0.0 });
            row.bars.push((slice.end(), *value));
            row.most = row.most.max(*value);
        }
    }
    rows.into_values().collect()
}

/// Draws `trace` into an SVG file: a row per thread (or client), time
/// across, nested slices drawn inside the slices holding them, instants
/// as red ticks, the numbers slices carry as bars, and requests in flight
/// below the threads.
pub fn draw_svg(trace: &Trace, out: &Path, picture: &Picture) -> Result<()> {
    let title = picture.title.as_str();
    let threads: Vec<&Thread> = trace.threads.iter().take(MAX_ROWS).collect();
    let numbers = number_rows(trace);
    let hidden_threads = trace.threads.len() - threads.len();
    // Asynchronous slices packed greedily into rows; the last row takes the overflow.
    let mut lane_ends: Vec<f64> = Vec::new();
    let mut lanes: Vec<(usize, &Slice)> = Vec::new();
    for slice in &trace.async_slices {
        let lane = match lane_ends.iter().position(|&end| end <= slice.start) {
            Some(lane) => lane,
            None => {
                lane_ends.push(f64::NEG_INFINITY);
                lane_ends.len() - 1
            }
        };
        lane_ends[lane] = lane_ends[lane].max(slice.end());
        lanes.push((lane, slice));
    }
    // More overlapping than rows allow: one row counting them instead.
    let counted = lane_ends.len() > MAX_ASYNC_ROWS;
    let async_rows = if counted { 2 } else { lane_ends.len() };
    let async_gap = if async_rows > 0 { ROW_HEIGHT } else { 0 };
    let rows = threads.len() as i32 + numbers.len() as i32 + async_rows as i32;
    let height = (HEADER_HEIGHT + rows * ROW_HEIGHT + async_gap + FOOTER_HEIGHT) as u32;

    let root = SVGBackend::new(out, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let (first, mut last) = if picture.whole { trace.span() } else { trace.busy_span() };
    if let Some(span_ms) = picture.span_ms {
        last = first + span_ms * 1000.0;
    }
    let plot_width = (WIDTH as i32 - LABEL_WIDTH - RIGHT_MARGIN) as f64;
    let x_of = |ts: f64| LABEL_WIDTH as f64 + (ts.clamp(first, last) - first) / (last - first) * plot_width;
    let outside = |slice: &Slice| slice.end() < first || slice.start > last;
    let text = |size: u32| ("sans-serif", size).into_font().color(&BLACK);
    root.draw(&Text::new(title.to_string(), (LABEL_WIDTH, 8), text(16))).map_err(draw_error)?;

    let mut legend = Legend { names: Vec::new() };
    let mut bars = Bars::default();
    let mut ticks: Vec<(i32, i32, i32)> = Vec::new();
    let mut ends: Vec<(i32, i32, i32)> = Vec::new();
    for (row, thread) in threads.iter().enumerate() {
        let top = HEADER_HEIGHT + row as i32 * ROW_HEIGHT;
        root.draw(&Text::new(
            thread.name.clone(),
            (LABEL_WIDTH - 6, top + ROW_HEIGHT / 2),
            text(11).pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(draw_error)?;
        // Outer slices first, so that nested ones are drawn over them.
        let deepest = thread.slices.iter().map(|s| s.depth).max().unwrap_or(0);
        for depth in 0..=deepest {
            for slice in thread.slices.iter().filter(|s| s.depth == depth && !outside(s)) {
                let inset = (2 + 4 * depth as i32).min(ROW_HEIGHT / 2 - 2);
                push_bar(
                    &mut bars,
                    Bar {
                        x0: x_of(slice.start),
                        x1: x_of(slice.end()).max(x_of(slice.start) + 0.5),
                        y0: top + inset,
                        y1: top + ROW_HEIGHT - 2,
                        color: legend.color(&slice.name),
                    },
                );
            }
        }
        for (ts, _) in thread.instants.iter().filter(|(ts, _)| (first..=last).contains(ts)) {
            ticks.push((x_of(*ts) as i32, top, top + ROW_HEIGHT));
        }
        // A client's request ends with its response: a dark mark, so that
        // back-to-back requests show where one answer came.
        for slice in thread.slices.iter().filter(|s| s.depth == 0 && s.name.starts_with("request") && !outside(s)) {
            ends.push((x_of(slice.end()) as i32, top + 2, top + ROW_HEIGHT - 2));
        }
    }
    for (index, row) in numbers.iter().enumerate() {
        let top = HEADER_HEIGHT + (threads.len() + index) as i32 * ROW_HEIGHT;
        root.draw(&Text::new(
            format!("{} (most {})", row.label.rsplit(": ").next().unwrap_or(&row.label), row.most),
            (LABEL_WIDTH - 6, top + ROW_HEIGHT / 2),
            text(10).pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(draw_error)?;
        let bottom = top + ROW_HEIGHT - 2;
        let mut tallest_at: BTreeMap<i32, f64> = BTreeMap::new();
        for &(ts, value) in row.bars.iter().filter(|(ts, _)| (first..=last).contains(ts)) {
            let x = x_of(ts) as i32;
            let tallest = tallest_at.entry(x).or_insert(0.0);
            *tallest = tallest.max(value);
        }
        // One bar per pixel column, the tallest there.
        for (x, value) in tallest_at {
            let height = ((value / row.most.max(1.0)) * (ROW_HEIGHT - 4) as f64).round().max(1.0) as i32;
            root.draw(&Rectangle::new([(x, bottom - height), (x + 1, bottom)], RGBColor(84, 39, 143).filled()))
                .map_err(draw_error)?;
        }
    }
    let async_top = HEADER_HEIGHT + (threads.len() + numbers.len()) as i32 * ROW_HEIGHT + async_gap;
    if async_rows > 0 {
        let shown = if counted { "how many at once" } else { "one bar each" };
        root.draw(&Text::new(
            format!("in flight: {} {}s ({shown})", trace.async_slices.len(), trace.async_slices[0].name),
            (LABEL_WIDTH, async_top - ROW_HEIGHT / 2),
            text(11).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(draw_error)?;
    }
    if counted {
        let top = async_top;
        let bottom = top + async_rows as i32 * ROW_HEIGHT - 2;
        let columns =
            in_flight_columns(&trace.async_slices, |ts| x_of(ts) as i32 - LABEL_WIDTH, plot_width as usize + 1);
        let most = columns.iter().copied().max().unwrap_or(0).max(1);
        root.draw(&Text::new(
            format!("at once (most {most})"),
            (LABEL_WIDTH - 6, (top + bottom) / 2),
            text(10).pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(draw_error)?;
        let color = RGBColor(99, 99, 99);
        for (column, &count) in columns.iter().enumerate().filter(|(_, &count)| count > 0) {
            let height = (count as f64 / most as f64 * (bottom - top - 2) as f64).round().max(1.0) as i32;
            let x = LABEL_WIDTH + column as i32;
            root.draw(&Rectangle::new([(x, bottom - height), (x + 1, bottom)], color.filled())).map_err(draw_error)?;
        }
        lanes.clear();
    }
    let mut by_lane: Vec<Vec<&Slice>> = vec![Vec::new(); if counted { 0 } else { async_rows }];
    for (lane, slice) in lanes {
        by_lane[lane].push(slice);
    }
    for (lane, slices) in by_lane.iter().enumerate() {
        let top = async_top + lane as i32 * ROW_HEIGHT;
        for slice in slices.iter().filter(|s| !outside(s)) {
            push_bar(
                &mut bars,
                Bar {
                    x0: x_of(slice.start),
                    x1: x_of(slice.end()).max(x_of(slice.start) + 0.5),
                    y0: top + 4,
                    y1: top + ROW_HEIGHT - 4,
                    color: legend.color(&slice.name),
                },
            );
        }
    }
    for bar in &bars.list {
        // A pixel's gap between wide neighbours, so back-to-back slices stay apart.
        let x1 = if bar.x1 - bar.x0 > 3.0 { bar.x1 - 1.0 } else { bar.x1 };
        let (x0, x1) = (bar.x0.round() as i32, (x1.round() as i32).max(bar.x0.round() as i32 + 1));
        root.draw(&Rectangle::new([(x0, bar.y0), (x1, bar.y1)], bar.color.filled())).map_err(draw_error)?;
    }
    for &(x, y0, y1) in &ticks {
        root.draw(&PathElement::new(vec![(x, y0), (x, y1)], RED.stroke_width(2))).map_err(draw_error)?;
    }
    for &(x, y0, y1) in &ends {
        root.draw(&PathElement::new(vec![(x, y0), (x, y1)], BLACK.stroke_width(2))).map_err(draw_error)?;
    }

    // The time axis, in milliseconds from the first event.
    let axis_y = HEADER_HEIGHT + rows * ROW_HEIGHT + async_gap + 4;
    let right = WIDTH as i32 - RIGHT_MARGIN;
    root.draw(&PathElement::new(vec![(LABEL_WIDTH, axis_y), (right, axis_y)], BLACK.stroke_width(1)))
        .map_err(draw_error)?;
    let span_ms = (last - first) / 1000.0;
    let step = nice_step(span_ms / 8.0);
    let mut tick = 0.0;
    while tick <= span_ms + 1e-9 {
        let x = x_of(first + tick * 1000.0) as i32;
        root.draw(&PathElement::new(vec![(x, axis_y), (x, axis_y + 4)], BLACK.stroke_width(1))).map_err(draw_error)?;
        let label = if step < 1.0 { format!("{tick:.1}") } else { format!("{tick:.0}") };
        root.draw(&Text::new(label, (x, axis_y + 6), text(10).pos(Pos::new(HPos::Center, VPos::Top))))
            .map_err(draw_error)?;
        tick += step;
    }
    root.draw(&Text::new("ms", (right, axis_y + 6), text(10).pos(Pos::new(HPos::Left, VPos::Top))))
        .map_err(draw_error)?;

    // The legend: every name drawn, in its color.
    let mut x = LABEL_WIDTH;
    let legend_y = axis_y + 26;
    let mut entries: Vec<String> = legend.names.clone();
    if !ticks.is_empty() {
        entries.push("instant (signal, cache clear)".to_string());
    }
    if !ends.is_empty() {
        entries.push("response complete".to_string());
    }
    if hidden_threads > 0 {
        entries.push(format!("(+{hidden_threads} threads not drawn)"));
    }
    for name in entries {
        let color = if name.starts_with("instant") {
            RED
        } else if name == "response complete" {
            BLACK
        } else if name.starts_with("(+") {
            WHITE
        } else {
            legend.color(&name)
        };
        root.draw(&Rectangle::new([(x, legend_y), (x + 12, legend_y + 12)], color.filled())).map_err(draw_error)?;
        root.draw(&Text::new(name.clone(), (x + 16, legend_y + 6), text(11).pos(Pos::new(HPos::Left, VPos::Center))))
            .map_err(draw_error)?;
        x += 16 + 7 * name.len() as i32 + 14;
    }
    root.present().map_err(draw_error)?;
    Ok(())
}

/// The most slices in flight at once in each pixel column, `column`
/// giving a time's column: a sweep over their starts and ends.
fn in_flight_columns(slices: &[Slice], column: impl Fn(f64) -> i32, width: usize) -> Vec<usize> {
    let mut edges: Vec<(f64, i32)> = slices.iter().flat_map(|s| [(s.start, 1), (s.end(), -1)]).collect();
    // Ends before starts at one moment: back-to-back requests are not two at once.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut columns = vec![0usize; width];
    let clamp = |ts: f64| column(ts).clamp(0, width as i32 - 1) as usize;
    let mut count: i64 = 0;
    let mut last = 0;
    for (ts, delta) in edges {
        let here = clamp(ts);
        for slot in &mut columns[last..=here.max(last)] {
            *slot = (*slot).max(count.max(0) as usize);
        }
        count += i64::from(delta);
        columns[here] = columns[here].max(count.max(0) as usize);
        last = here;
    }
    columns
}

/// A round step (1, 2 or 5 times a power of ten) near `rough`.
fn nice_step(rough: f64) -> f64 {
    if rough <= 0.0 || !rough.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(rough.log10().floor());
    let mantissa = rough / power;
    let nice = if mantissa < 1.5 {
        1.0
    } else if mantissa < 3.5 {
        2.0
    } else if mantissa < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * power
}

fn draw_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a timeline: {err}")
}

/// `client grade --timeline DIR`: each test's exchanges, as the grader's
/// connections saw them, in `DIR/<test>.json`. The grader's wire code
/// holds a [`Watch`](grading::Watch) per connection; [`capture`](grading::capture) gathers a test's.
pub mod grading {
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    use super::{Recording, RequestRecord, MAX_RECORDED_REQUESTS};

    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static CURRENT: Mutex<Option<Capture>> = Mutex::new(None);

    /// The test being recorded.
    #[derive(Debug)]
    struct Capture {
        epoch: Instant,
        next_client: usize,
        recording: Recording,
    }

    /// Records every test's exchanges into `dir` (created if need be).
    pub fn record_into(dir: &Path) -> anyhow::Result<()> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let _ = DIR.set(dir.to_path_buf());
        Ok(())
    }

    fn current() -> std::sync::MutexGuard<'static, Option<Capture>> {
        CURRENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts recording the test `name`; its file is written when the
    /// guard is dropped. Nothing happens unless [`record_into`] was called.
    pub fn capture(name: &str) -> Option<Written> {
        let dir = DIR.get()?;
        *current() = Some(Capture { epoch: Instant::now(), next_client: 0, recording: Recording::default() });
        Some(Written { path: dir.join(format!("{name}.json")), name: name.to_string() })
    }

    /// Writes a test's timeline when dropped.
    #[derive(Debug)]
    pub struct Written {
        path: PathBuf,
        name: String,
    }

    impl Drop for Written {
        fn drop(&mut self) {
            let Some(capture) = current().take() else { return };
            if capture.recording.requests.is_empty() {
                return;
            }
            if let Err(err) = capture.recording.write(&self.path, &format!("client grade: {}", self.name)) {
                eprintln!("client grade: {err:#}");
            }
        }
    }

    /// The moments of the exchange in flight on one grader connection.
    #[derive(Debug, Clone, Copy)]
    struct Marks {
        start: Instant,
        connected: Option<Instant>,
        sent: Option<Instant>,
        first_byte: Option<Instant>,
    }

    /// One grader connection's exchanges, recorded while a test is
    /// captured (and nothing otherwise).
    #[derive(Debug)]
    pub struct Watch(Option<Exchanges>);

    #[derive(Debug)]
    struct Exchanges {
        client: usize,
        path: String,
        marks: Option<Marks>,
    }

    impl Watch {
        /// A connection about to connect.
        pub fn connecting() -> Watch {
            let mut current = current();
            let Some(capture) = current.as_mut() else { return Watch(None) };
            let client = capture.next_client;
            capture.next_client += 1;
            let marks = Marks { start: Instant::now(), connected: None, sent: None, first_byte: None };
            Watch(Some(Exchanges { client, path: String::new(), marks: Some(marks) }))
        }

        /// The connect finished.
        pub fn connected(&mut self) {
            if let Some(marks) = self.0.as_mut().and_then(|e| e.marks.as_mut()) {
                marks.connected.get_or_insert_with(Instant::now);
            }
        }

        /// `bytes` were written: a request (its first line names it).
        pub fn sent(&mut self, bytes: &[u8]) {
            let Some(exchanges) = &mut self.0 else { return };
            let now = Instant::now();
            let fresh = Marks { start: now, connected: Some(now), sent: None, first_byte: None };
            let marks = exchanges.marks.get_or_insert(fresh);
            marks.sent = Some(now);
            if exchanges.path.is_empty() || marks.first_byte.is_none() {
                let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
                exchanges.path = String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned();
            }
        }

        /// `n` bytes arrived.
        pub fn received(&mut self, n: usize) {
            if let Some(marks) = self.0.as_mut().and_then(|e| e.marks.as_mut()).filter(|_| n > 0) {
                marks.first_byte.get_or_insert_with(Instant::now);
            }
        }

        /// The exchange ended: a reply of `outcome` (its body bytes) or why not.
        pub fn done(&mut self, outcome: Result<u64, String>) {
            let Some(exchanges) = &mut self.0 else { return };
            let Some(marks) = exchanges.marks.take() else { return };
            let mut current = current();
            let Some(capture) = current.as_mut() else { return };
            if capture.recording.requests.len() >= MAX_RECORDED_REQUESTS {
                capture.recording.left_out += 1;
                return;
            }
            let since = |at: Instant| at.saturating_duration_since(capture.epoch);
            capture.recording.requests.push(RequestRecord {
                client: exchanges.client,
                path: std::mem::take(&mut exchanges.path),
                start: since(marks.start),
                connected: marks.connected.map(since),
                sent: marks.sent.map(since),
                first_byte: marks.first_byte.map(since),
                end: since(Instant::now()),
                outcome,
            });
        }
    }

    impl Drop for Watch {
        /// A connection dropped mid-exchange (or that never sent a byte):
        /// recorded too, as the grader left it.
        fn drop(&mut self) {
            if self.0.as_ref().is_some_and(|e| e.marks.is_some()) {
                self.done(Err("the grader closed the connection without a complete reply".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_recording_reads_back_with_its_phases_nested_in_its_requests() {
        let recording = Recording {
            requests: vec![
                RequestRecord {
                    client: 0,
                    path: "a\"b".into(),
                    start: ms(0),
                    connected: Some(ms(1)),
                    sent: Some(ms(1)),
                    first_byte: Some(ms(11)),
                    end: ms(12),
                    outcome: Ok(5),
                },
                RequestRecord {
                    client: 1,
                    path: "c".into(),
                    start: ms(2),
                    connected: None,
                    sent: None,
                    first_byte: None,
                    end: ms(3),
                    outcome: Err("connect: refused".into()),
                },
            ],
            left_out: 0,
        };
        let trace = Trace::parse(&recording.to_json("test")).unwrap();
        assert_eq!(trace.threads.len(), 2);
        assert_eq!(trace.threads[0].name, "client 0");
        let names: Vec<(&str, usize)> = trace.threads[0].slices.iter().map(|s| (s.name.as_str(), s.depth)).collect();
        assert_eq!(names, [("request", 0), ("connect", 1), ("wait", 1), ("receive", 1)]);
        assert_eq!(trace.threads[1].slices[0].name, "request failed");
        assert!(trace.summary().contains("wait"));
    }

    #[test]
    fn begin_end_pairs_nest_and_an_unpaired_begin_is_an_error() {
        let text = r#"[{"ph":"B","pid":1,"tid":1,"ts":0,"name":"turn"},{"ph":"B","pid":1,"tid":1,"ts":1,"name":"wait"},
            {"ph":"E","pid":1,"tid":1,"ts":5},{"ph":"E","pid":1,"tid":1,"ts":9}]"#;
        let trace = Trace::parse(text).unwrap();
        let slices = &trace.threads[0].slices;
        assert_eq!((slices[0].name.as_str(), slices[0].depth, slices[0].dur), ("turn", 0, 9.0));
        assert_eq!((slices[1].name.as_str(), slices[1].depth, slices[1].dur), ("wait", 1, 4.0));
        assert!(Trace::parse(r#"[{"ph":"B","pid":1,"tid":1,"ts":0,"name":"x"}]"#).is_err());
        assert!(Trace::parse(r#"[{"ph":"E","pid":1,"tid":1,"ts":0}]"#).is_err());
        assert!(Trace::parse(r#"[{"pid":1,"tid":1,"ts":0}]"#).is_err());
    }

    #[test]
    fn a_picture_is_drawn_with_a_row_per_thread() {
        let text = r#"{"traceEvents":[{"ph":"M","pid":1,"tid":7,"ts":0,"name":"thread_name","args":{"name":"loop"}},
            {"ph":"X","pid":1,"tid":7,"ts":0,"dur":100,"name":"turn"},{"ph":"X","pid":1,"tid":7,"ts":0,"dur":60,"name":"wait"},
            {"ph":"b","pid":1,"tid":7,"ts":10,"cat":"request","id":1,"name":"request"},
            {"ph":"e","pid":1,"tid":7,"ts":90,"cat":"request","id":1,"name":"request"},
            {"ph":"i","s":"t","pid":1,"tid":7,"ts":50,"name":"SIGHUP"}]}"#;
        let trace = Trace::parse(text).unwrap();
        assert_eq!(trace.async_slices.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.svg");
        draw_svg(&trace, &out, &Picture { title: "test".into(), ..Picture::default() }).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.contains("loop") && svg.contains("<rect"), "{svg}");
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.7), 0.5);
        assert_eq!(nice_step(13.0), 10.0);
        assert_eq!(nice_step(2.6), 2.0);
    }
}
