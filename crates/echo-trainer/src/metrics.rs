//! The metrics JSONL (one line per optimizer step, one per evaluation, one per echo
//! diagnostics measurement) and SVG plots of the curves drawn from it (`loss.svg`, and
//! `echo.svg` for a run with diagnostics lines; by plotters' SVG backend: text is written as
//! SVG `<text>` elements, so no font files are read and no font library is linked).

use crate::diagnostics::{EchoDiagnostics, EchoLine};
use crate::error::{Context, Result, TrainError};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLine {
    pub step: usize,
    pub epoch: u64,
    pub loss: f32,
    pub ce_plain: f32,
    pub ce_echo: f32,
    pub kd: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens: usize,
    pub tokens_per_s: f64,
}

/// An evaluation line. Unknown fields are refused so that no other kind of line with a
/// `step` (a diagnostics line) reads as an evaluation without a loss.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalLine {
    step: usize,
    val_loss: Option<f32>,
}

/// The start of a run as its metrics record it: the first step's loss and the validation
/// loss before training.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunStart {
    pub first_loss: Option<f32>,
    pub first_val_loss: Option<f32>,
}

pub struct Metrics {
    file: File,
    path: PathBuf,
}

impl Metrics {
    /// Opens `path`, appending when resuming, else starting it afresh.
    pub fn open(path: &Path, append: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(path)
            .map_err(TrainError::io(path, "opening the metrics"))?;
        Ok(Metrics { file, path: path.to_path_buf() })
    }

    /// Opens `path` to continue a run resumed from its checkpoint at `step`. A run stopped
    /// after that checkpoint had already written lines for later steps, which this process
    /// trains again: they are dropped (as is a line cut short by a crash), so every step and
    /// every validation appears once. Returns what the kept lines say about the run's start.
    pub fn resume(path: &Path, step: usize) -> Result<(Self, RunStart)> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(TrainError::io(path, "reading the metrics")(e)),
        };
        let (mut kept, mut start) = (String::new(), RunStart::default());
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let Some(s) = v.get("step").and_then(|s| s.as_u64()) else { continue };
            if s as usize > step {
                continue;
            }
            if let Ok(l) = serde_json::from_value::<StepLine>(v.clone()) {
                if l.step == 1 {
                    start.first_loss = Some(l.loss);
                }
            } else if let Ok(EvalLine { step: 0, val_loss }) = serde_json::from_value::<EvalLine>(v) {
                start.first_val_loss = val_loss;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        echo_model::weights::write_atomic(path, kept.as_bytes())?;
        Self::open(path, true).map(|m| (m, start))
    }

    fn line(&mut self, json: String) -> Result<()> {
        writeln!(self.file, "{json}")
            .and_then(|_| self.file.flush())
            .map_err(TrainError::io(&self.path, "writing the metrics"))
    }

    pub fn step(&mut self, s: &StepLine) -> Result<()> {
        self.line(serde_json::to_string(s).expect("serialises"))
    }

    pub fn eval(&mut self, step: usize, val_loss: Option<f32>) -> Result<()> {
        self.line(serde_json::to_string(&EvalLine { step, val_loss }).expect("serialises"))
    }

    /// A diagnostics line, `{"step": s, "echo": {...}}` (trimmed by [`Metrics::resume`] like
    /// every line with a step).
    pub fn echo(&mut self, step: usize, echo: &EchoDiagnostics) -> Result<()> {
        self.line(serde_json::to_string(&EchoLine { step, echo: echo.clone() }).expect("serialises"))
    }
}

/// Writes `out`, an SVG plot of the run in `metrics` (see [`render_svg`]), atomically.
pub fn plot_svg(metrics: &Path, out: &Path) -> Result<()> {
    let f = File::open(metrics).map_err(TrainError::io(metrics, "reading the metrics"))?;
    let mut lines = Vec::new();
    for line in BufReader::new(f).lines() {
        lines.push(line.map_err(TrainError::io(metrics, "reading the metrics"))?);
    }
    let svg = render_svg(&lines).context(out.display().to_string())?;
    Ok(echo_model::weights::write_atomic(out, svg.as_bytes())?)
}

/// What the plot shows, read from the metrics lines.
#[derive(Default)]
struct Curves {
    loss: Vec<(f64, f64)>,
    ce_plain: Vec<(f64, f64)>,
    ce_echo: Vec<(f64, f64)>,
    kd: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    val: Vec<(f64, f64)>,
}

impl Curves {
    /// Step and evaluation lines; anything else (a line cut short by a crash) is passed over,
    /// and so are non-finite values (a NaN step draws no point).
    fn read(lines: &[String]) -> Curves {
        let mut c = Curves::default();
        let push = |v: &mut Vec<(f64, f64)>, x: usize, y: f32| {
            if y.is_finite() {
                v.push((x as f64, y as f64));
            }
        };
        for line in lines {
            if let Ok(s) = serde_json::from_str::<StepLine>(line) {
                push(&mut c.loss, s.step, s.loss);
                push(&mut c.ce_plain, s.step, s.ce_plain);
                push(&mut c.ce_echo, s.step, s.ce_echo);
                push(&mut c.kd, s.step, s.kd);
                push(&mut c.lr, s.step, s.lr);
            } else if let Ok(EvalLine { step, val_loss: Some(v) }) = serde_json::from_str::<EvalLine>(line) {
                push(&mut c.val, step, v);
            }
        }
        c
    }

    /// The echo route ran when some step logged a positive echo CE or KD term.
    fn has_echo(&self) -> bool {
        self.ce_echo.iter().chain(&self.kd).any(|p| p.1 > 0.0)
    }
}

/// The span (in steps) of the train loss's EMA: a tenth of the run, 1 to 100 steps.
fn ema_span(steps: usize) -> usize {
    (steps / 10).clamp(1, 100)
}

/// Exponential moving average with `beta = 1 - 2 / (span + 1)`, bias-corrected (divided by
/// `1 - beta^t`) so that the first points are not pulled towards zero.
fn ema(points: &[(f64, f64)], span: usize) -> Vec<(f64, f64)> {
    let beta = 1.0 - 2.0 / (span as f64 + 1.0);
    let (mut m, mut weight) = (0.0, 0.0);
    points
        .iter()
        .map(|&(x, y)| {
            m = beta * m + (1.0 - beta) * y;
            weight = beta * weight + (1.0 - beta);
            (x, m / weight)
        })
        .collect()
}

/// A y range holding every value, with a little room; a flat series gets a band around it.
fn y_range<'a>(series: impl IntoIterator<Item = &'a [(f64, f64)]>, from_zero: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        for &(_, y) in s {
            lo = lo.min(y);
            hi = hi.max(y);
        }
    }
    if lo > hi {
        return 0.0..1.0;
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    let pad = if hi - lo > 1e-12 { 0.05 * (hi - lo) } else { (0.1 * hi.abs()).max(1e-3) };
    (if from_zero && lo >= 0.0 { lo } else { lo - pad })..hi + pad
}

const TRAIN_RAW: RGBAColor = RGBAColor(31, 119, 180, 0.35);
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const PLAIN: RGBColor = RGBColor(44, 160, 44);
const ECHO: RGBColor = RGBColor(214, 39, 40);
const KD: RGBColor = RGBColor(148, 103, 189);
const LR: RGBColor = RGBColor(127, 127, 127);

type PlotResult<T> = Result<T>;

/// One loss part of the echo panel: its name, colour and points.
type Part<'a> = (&'a str, RGBColor, &'a [(f64, f64)]);

/// Step ticks as integers (a short run's axis may tick at fractions: those keep theirs).
fn step_label(v: &f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn drawing<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> TrainError {
    TrainError::Plot(e.to_string())
}

/// One panel of the plot: titled, with room for the tick labels, on `x` by `y`.
type Panel<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> PlotResult<Panel<'a, 'b>> {
    ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .margin_right(24)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(drawing)
}

/// A panel's legend, upper right on a translucent box.
fn legend<'a, 'b: 'a>(chart: &mut Panel<'a, 'b>, font: (&str, u32)) -> PlotResult<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(font)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(drawing)
}

/// The plot of a run's metrics lines, as SVG text. Panels, sharing the step axis:
/// - **loss**: the train loss per step (faint) and its EMA (see [`ema_span`]), the validation
///   loss as marked points (the plain route: the deployed adapter);
/// - **echo route** (only when it ran): the loss parts, CE of the plain route, CE of the echo
///   route (both `/N`) and the KD term, which sit on their own scale;
/// - **learning rate**.
pub fn render_svg(lines: &[String]) -> PlotResult<String> {
    let c = Curves::read(lines);
    let echo = c.has_echo();
    let (width, loss_h, echo_h, lr_h) = (840u32, 380u32, 260u32, 200u32);
    let height = loss_h + if echo { echo_h } else { 0 } + lr_h;
    let last = c.loss.iter().chain(&c.val).chain(&c.lr).map(|p| p.0).fold(0.0f64, f64::max);
    let x = 0.0..last.max(1.0);
    let font = ("sans-serif", 13);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut breaks = vec![loss_h as i32];
        if echo {
            breaks.push((loss_h + echo_h) as i32);
        }
        let panels = root.split_by_breakpoints([] as [i32; 0], breaks);

        // Loss.
        let span = ema_span(c.loss.len());
        let smooth = ema(&c.loss, span);
        let mut chart = panel(&panels[0], "loss", x.clone(), y_range([c.loss.as_slice(), c.val.as_slice()], false))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&step_label)
            .y_desc("loss")
            .label_style(font)
            .light_line_style(BLACK.mix(0.04))
            .draw()
            .map_err(drawing)?;
        chart
            .draw_series(LineSeries::new(c.loss.iter().copied(), TRAIN_RAW.stroke_width(1)))
            .map_err(drawing)?
            .label("train loss (per step)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TRAIN_RAW.stroke_width(1)));
        chart
            .draw_series(LineSeries::new(smooth, TRAIN.stroke_width(2)))
            .map_err(drawing)?
            .label(format!("train loss, EMA over {span} step{}", if span == 1 { "" } else { "s" }))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TRAIN.stroke_width(2)));
        if !c.val.is_empty() {
            chart.draw_series(LineSeries::new(c.val.iter().copied(), VAL.mix(0.6).stroke_width(1))).map_err(drawing)?;
            chart
                .draw_series(c.val.iter().map(|&p| Circle::new(p, 4, VAL.filled())))
                .map_err(drawing)?
                .label("validation loss (plain route)")
                .legend(|(x, y)| Circle::new((x + 10, y), 4, VAL.filled()));
        }
        legend(&mut chart, font)?;

        // The echo route's loss parts.
        if echo {
            let parts: Vec<Part> = [
                ("CE plain route (/N)", PLAIN, c.ce_plain.as_slice()),
                ("CE echo route (/N)", ECHO, c.ce_echo.as_slice()),
                ("KD term", KD, c.kd.as_slice()),
            ]
            .into_iter()
            .filter(|p| p.2.iter().any(|q| q.1 != 0.0))
            .collect();
            let mut chart =
                panel(&panels[1], "echo route: loss parts", x.clone(), y_range(parts.iter().map(|p| p.2), true))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .x_label_formatter(&step_label)
                .y_desc("loss part")
                .label_style(font)
                .light_line_style(BLACK.mix(0.04))
                .draw()
                .map_err(drawing)?;
            for (name, color, points) in parts {
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(1)))
                    .map_err(drawing)?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            legend(&mut chart, font)?;
        }

        // Learning rate.
        let mut chart =
            panel(panels.last().expect("at least two panels"), "learning rate", x, y_range([c.lr.as_slice()], true))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&step_label)
            .y_desc("lr")
            .label_style(font)
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .light_line_style(BLACK.mix(0.04))
            .draw()
            .map_err(drawing)?;
        chart.draw_series(LineSeries::new(c.lr.iter().copied(), LR.stroke_width(2))).map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// Writes `out`, the plot of the echo diagnostics lines in `metrics` (see
/// [`render_echo_svg`]), atomically; a run without such lines gets no file (`false`).
pub fn plot_echo_svg(metrics: &Path, out: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(metrics).map_err(TrainError::io(metrics, "reading the metrics"))?;
    let lines: Vec<String> = text.lines().map(String::from).collect();
    match render_echo_svg(&lines).context(out.display().to_string())? {
        None => Ok(false),
        Some(svg) => Ok(echo_model::weights::write_atomic(out, svg.as_bytes()).map(|_| true)?),
    }
}

/// Line colours of the per-layer series (matplotlib's tab10), taken in turn.
const SERIES: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One named series of an echo panel.
type Series = (String, RGBColor, Vec<(f64, f64)>);

/// The per-index series of a list-valued diagnostic (`pick` takes the list from a line),
/// named by `label(index)`; non-finite and missing values draw no point.
fn list_series(
    lines: &[EchoLine],
    count: usize,
    label: impl Fn(usize) -> String,
    pick: impl Fn(&EchoDiagnostics) -> Vec<Option<f64>>,
) -> Vec<Series> {
    (0..count)
        .map(|i| {
            let points = lines
                .iter()
                .filter_map(|l| pick(&l.echo).get(i).copied().flatten().map(|y| (l.step as f64, y)))
                .filter(|p| p.1.is_finite())
                .collect();
            (label(i), SERIES[i % SERIES.len()], points)
        })
        .collect()
}

/// A tick label with three significant digits (scientific outside 0.001..10000): the echo
/// numbers range from a KL of 1e-6 to norms of 10, and a slowly moving gate needs its digits.
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let mag = v.abs().log10().floor();
    if (-3.0..4.0).contains(&mag) {
        format!("{v:.*}", (2.0 - mag).max(0.0) as usize)
    } else {
        format!("{v:.2e}")
    }
}

/// How an echo panel's y axis is drawn.
#[derive(Clone, Copy, PartialEq)]
enum Axis {
    /// Linear, from zero (a KL, a norm).
    FromZero,
    /// Linear, around the values (a gate near 0.12, mixing weights near 1/|S|, whose
    /// movements are small).
    Around,
    /// `log10` of the values (a ratio spanning orders of magnitude), ticks labelled in the
    /// values; non-positive values draw no point.
    Log,
}

/// One echo panel: its series as lines with a marker at each measurement (they are sparse),
/// and a legend.
fn echo_panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    x: std::ops::Range<f64>,
    series: &[Series],
    axis: Axis,
) -> PlotResult<()> {
    let log = axis == Axis::Log;
    let font = ("sans-serif", 13);
    let series: Vec<Series> = if log {
        series
            .iter()
            .map(|(n, c, p)| (n.clone(), *c, p.iter().filter(|q| q.1 > 0.0).map(|&(x, y)| (x, y.log10())).collect()))
            .collect()
    } else {
        series.to_vec()
    };
    let mut chart = panel(area, title, x, y_range(series.iter().map(|s| s.2.as_slice()), axis == Axis::FromZero))?;
    let log_label = |v: &f64| significant(10f64.powf(*v));
    let plain_label = |v: &f64| significant(*v);
    let y_label: &dyn Fn(&f64) -> String = if log { &log_label } else { &plain_label };
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&step_label)
        .y_desc(y_desc)
        .y_labels(6)
        .y_label_formatter(y_label)
        .label_style(font)
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(drawing)?;
    for (name, color, points) in series {
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 2, color.filled()))).map_err(drawing)?;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(drawing)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart, font)
}

/// The plot of a run's echo diagnostics lines (`None` when it has none), as SVG text. Panels,
/// sharing the step axis: the gate mean per target layer, rms(g ⊙ p) over the adapter's own
/// term per target layer (log scale; the site decides which term), KL(echo ‖ plain) on the
/// probe, the layer-mix weights per source layer, and the echo parameters' norms (trunk,
/// and all target modules' projection and gate weights together). Other lines, and lines
/// that do not parse, are passed over.
pub fn render_echo_svg(lines: &[String]) -> PlotResult<Option<String>> {
    let echo: Vec<EchoLine> = lines.iter().filter_map(|l| serde_json::from_str::<EchoLine>(l).ok()).collect();
    let Some(first) = echo.first().map(|l| &l.echo) else { return Ok(None) };
    let (targets, sources) = (first.target_layers.clone(), first.source_layers.clone());
    let last = echo.iter().map(|l| l.step as f64).fold(0.0f64, f64::max);
    let x = 0.0..last.max(1.0);
    let some = |v: &[f32]| v.iter().map(|&y| Some(y as f64)).collect::<Vec<_>>();
    let layer = |i: usize| format!("layer {}", targets[i]);
    let gate = list_series(&echo, targets.len(), layer, |d| some(&d.gate_mean));
    let ratio = list_series(&echo, targets.len(), layer, |d| d.rms_ratio.iter().map(|r| r.map(f64::from)).collect());
    let mix = list_series(&echo, sources.len(), |i| format!("source layer {}", sources[i]), |d| some(&d.layer_mix));
    // Single series: one value per line (`None`, or non-finite: no point).
    let one = |f: &dyn Fn(&EchoDiagnostics) -> Option<f64>| -> Vec<(f64, f64)> {
        echo.iter().filter_map(|l| f(&l.echo).map(|y| (l.step as f64, y))).filter(|p| p.1.is_finite()).collect()
    };
    let kl: Vec<Series> = vec![("KL(echo ‖ plain)".into(), SERIES[0], one(&|d| d.kl.map(f64::from)))];
    let total = |v: &[f32]| Some(v.iter().map(|&n| n as f64 * n as f64).sum::<f64>().sqrt());
    let norms: Vec<Series> = vec![
        ("trunk D".into(), SERIES[0], one(&|d| Some(d.trunk_norm as f64))),
        ("projections U, all targets".into(), SERIES[1], one(&|d| total(&d.proj_norm))),
        ("gate weights G, all targets".into(), SERIES[2], one(&|d| total(&d.gate_weight_norm))),
    ];
    let against = match first.site {
        crate::echo::InjectionSite::Bottleneck => "rms(g⊙p) / rms(A x), bottleneck site",
        crate::echo::InjectionSite::Output => "rms(g⊙p) / rms(adapter delta), output site",
    };
    let (width, h) = (840u32, 260u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 5 * h)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let panels = root.split_evenly((5, 1));
        echo_panel(&panels[0], "echo gate: mean g per target layer", "gate mean", x.clone(), &gate, Axis::Around)?;
        echo_panel(&panels[1], against, "ratio", x.clone(), &ratio, Axis::Log)?;
        echo_panel(&panels[2], "KL(echo ‖ plain) on the probe batch", "KL", x.clone(), &kl, Axis::FromZero)?;
        echo_panel(&panels[3], "layer mix: softmax(echo.layer_logits)", "weight", x.clone(), &mix, Axis::Around)?;
        echo_panel(&panels[4], "echo parameter norms (Frobenius)", "norm", x, &norms, Axis::FromZero)?;
        root.present().map_err(drawing)?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod plot_tests {
    use super::*;

    fn step(step: usize, loss: f32, ce_echo: f32, kd: f32) -> String {
        serde_json::to_string(&StepLine {
            step,
            epoch: 0,
            loss,
            ce_plain: loss - ce_echo,
            ce_echo,
            kd,
            lr: 2e-4 * step as f32 / 40.0,
            grad_norm: 1.0,
            tokens: 100,
            tokens_per_s: 50.0,
        })
        .unwrap()
    }

    fn val(step: usize, v: f32) -> String {
        serde_json::to_string(&EvalLine { step, val_loss: Some(v) }).unwrap()
    }

    fn run(echo: bool) -> Vec<String> {
        let mut lines = vec![val(0, 2.6)];
        for s in 1..=40 {
            let loss = 2.6 - 0.06 * s as f32 + if s % 2 == 0 { 0.1 } else { -0.1 };
            lines.push(step(s, loss, if echo { 0.4 * loss } else { 0.0 }, if echo { 0.05 } else { 0.0 }));
            if s % 10 == 0 {
                lines.push(val(s, loss + 0.05));
            }
        }
        lines
    }

    /// Every `<text>` element's content, trimmed.
    fn texts(doc: &roxmltree::Document) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or_default().trim().to_string())
            .collect()
    }

    #[test]
    fn the_plot_is_svg_with_labelled_axes_and_its_panels() {
        let svg = render_svg(&run(true)).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
        let t = texts(&doc);
        for want in [
            "loss",
            "echo route: loss parts",
            "learning rate",
            "step",
            "lr",
            "loss part",
            "train loss (per step)",
            "train loss, EMA over 4 steps",
            "validation loss (plain route)",
            "CE plain route (/N)",
            "CE echo route (/N)",
            "KD term",
        ] {
            assert!(t.iter().any(|x| x == want), "no text {want:?} in {t:?}");
        }
        assert_eq!(t.iter().filter(|x| *x == "step").count(), 3, "each panel labels its step axis");
        // Ticks: numbers on the step axis up to the last step, and lr in scientific notation.
        assert!(t.iter().any(|x| x == "40" || x == "40.0"), "step ticks reach 40: {t:?}");
        assert!(t.iter().any(|x| x.contains("e-4")), "lr ticks: {t:?}");
        // Five validation points, each a marker (plus the legend's).
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name("circle")).count(), 6);
        assert!(doc.descendants().filter(|n| n.has_tag_name("polyline")).count() >= 5, "raw, EMA, val, 3 parts, lr");
    }

    #[test]
    fn a_plain_run_has_no_echo_panel() {
        let svg = render_svg(&run(false)).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let t = texts(&doc);
        assert!(t.iter().any(|x| x == "learning rate") && t.iter().any(|x| x == "loss"));
        assert!(!t.iter().any(|x| x.contains("echo route")), "{t:?}");
        assert_eq!(t.iter().filter(|x| *x == "step").count(), 2);
    }

    #[test]
    fn plot_svg_reads_the_jsonl_and_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("echo-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = dir.join("metrics.jsonl");
        // A non-finite loss is written as null and a crash can cut the last line short:
        // both are passed over.
        let mut text = run(true).join("\n");
        text += "\n{\"step\":41,\"epoch\":0,\"loss\":null}\n{\"step\":42,\"ep";
        std::fs::write(&metrics, text).unwrap();
        let out = dir.join("loss.svg");
        std::fs::write(&out, "old").unwrap();
        plot_svg(&metrics, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        roxmltree::Document::parse(&svg).expect("well-formed XML");
        assert!(svg.contains("learning rate"));
        assert!(std::fs::read_dir(&dir).unwrap().count() == 2, "no temporary file left");
        let e = plot_svg(&dir.join("missing.jsonl"), &out).unwrap_err().to_string();
        assert!(e.contains("missing.jsonl"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn echo_line(step: usize, site: crate::echo::InjectionSite, ratio: Option<f32>) -> String {
        let d = EchoDiagnostics {
            site,
            probe_samples: 8,
            probe_positions: 40,
            target_layers: vec![0, 1],
            source_layers: vec![26, 27, 28, 29],
            gate_mean: vec![0.12 + 0.001 * step as f32, 0.12],
            inject_rms: vec![0.01, 0.02],
            adapter_rms: vec![1.0, 0.5],
            rms_ratio: vec![ratio, Some(0.04)],
            proj_norm: vec![0.5, 0.5],
            gate_weight_norm: vec![0.5, 0.5 + 0.01 * step as f32],
            gate_bias_mean: vec![-2.0, -2.0],
            trunk_norm: 4.0,
            layer_mix: vec![0.25; 4],
            kl: Some(0.001 * step as f32),
            seconds: 0.1,
        };
        serde_json::to_string(&EchoLine { step, echo: d }).unwrap()
    }

    #[test]
    fn the_echo_plot_has_its_panels_and_one_series_per_layer() {
        use crate::echo::InjectionSite;
        let mut lines = run(true);
        for s in (0..=40).step_by(10) {
            // No ratio at step 0 (the output site's fresh B): that point is left out.
            lines.push(echo_line(s, InjectionSite::Output, (s > 0).then_some(5.0 / s as f32)));
        }
        let svg = render_echo_svg(&lines).unwrap().expect("a run with diagnostics lines");
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let t = texts(&doc);
        for want in [
            "echo gate: mean g per target layer",
            "rms(g⊙p) / rms(adapter delta), output site",
            "KL(echo ‖ plain) on the probe batch",
            "layer mix: softmax(echo.layer_logits)",
            "echo parameter norms (Frobenius)",
            "layer 0",
            "layer 1",
            "source layer 26",
            "source layer 29",
            "KL(echo ‖ plain)",
            "trunk D",
        ] {
            assert!(t.iter().any(|x| x == want), "no text {want:?} in {t:?}");
        }
        assert_eq!(t.iter().filter(|x| *x == "step").count(), 5, "each panel labels its step axis");
        // Markers: 5 points per series, but layer 0's ratio has 4; 2 + 2 + 1 + 4 + 3 series.
        let circles = doc.descendants().filter(|n| n.has_tag_name("circle")).count();
        assert_eq!(circles, 5 * (2 + 2 + 1 + 4 + 3) - 1);
        // The loss plot is untouched by these lines, and a run without them has no echo plot.
        assert_eq!(render_svg(&lines).unwrap(), render_svg(&run(true)).unwrap());
        assert!(render_echo_svg(&run(true)).unwrap().is_none());
        let bottleneck = render_echo_svg(&[echo_line(0, InjectionSite::Bottleneck, Some(0.01))]).unwrap().unwrap();
        assert!(bottleneck.contains("rms(g⊙p) / rms(A x), bottleneck site"));
    }

    #[test]
    fn echo_ticks_keep_three_significant_digits() {
        assert_eq!(significant(0.1192), "0.119");
        assert_eq!(significant(0.5), "0.500");
        assert_eq!(significant(12.345), "12.3");
        assert_eq!(significant(2.5e-6), "2.50e-6");
        assert_eq!(significant(0.0), "0");
    }

    #[test]
    fn resume_trims_diagnostics_lines_and_keeps_the_first_validation() {
        use crate::echo::InjectionSite;
        let dir = std::env::temp_dir().join(format!("echo-metrics-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        // Step 0's diagnostics line follows its validation line, as the loop writes them.
        let mut lines = vec![val(0, 2.6), echo_line(0, InjectionSite::Bottleneck, Some(0.1))];
        for s in 1..=6 {
            lines.push(step(s, 2.0, 0.0, 0.0));
            if s % 3 == 0 {
                lines.push(echo_line(s, InjectionSite::Bottleneck, Some(0.1)));
            }
        }
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let (_, start) = Metrics::resume(&path, 4).unwrap();
        assert_eq!(start.first_val_loss, Some(2.6), "a diagnostics line at step 0 is no evaluation");
        assert_eq!(start.first_loss, Some(2.0));
        let kept = std::fs::read_to_string(&path).unwrap();
        let echo_steps: Vec<u64> =
            kept.lines().filter_map(|l| serde_json::from_str::<EchoLine>(l).ok()).map(|l| l.step as u64).collect();
        assert_eq!(echo_steps, [0, 3], "the line of step 6 is past the checkpoint");
        assert_eq!(kept.lines().count(), 1 + 1 + 4 + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_run_still_draws() {
        let svg = render_svg(&[]).unwrap();
        roxmltree::Document::parse(&svg).expect("well-formed XML");
    }

    #[test]
    fn ema_is_bias_corrected_and_follows_a_step() {
        let flat: Vec<(f64, f64)> = (1..=10).map(|i| (i as f64, 2.5)).collect();
        assert!(ema(&flat, 4).iter().all(|p| (p.1 - 2.5).abs() < 1e-12), "a constant stays put from the first point");
        let jump: Vec<(f64, f64)> = (1..=40).map(|i| (i as f64, if i <= 20 { 1.0 } else { 0.0 })).collect();
        let e = ema(&jump, 4);
        assert!(e[20].1 < 1.0 && e[20].1 > 0.0 && e[39].1 < 0.01, "{:?}", &e[18..24]);
        assert_eq!(ema_span(40), 4);
        assert_eq!(ema_span(9), 1);
        assert_eq!(ema_span(100_000), 100);
    }
}
