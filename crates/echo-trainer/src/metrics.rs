//! The metrics JSONL (one line per optimizer step, one per evaluation) and an SVG plot of the
//! curves drawn from it (`loss.svg`, by plotters' SVG backend: text is written as SVG `<text>`
//! elements, so no font files are read and no font library is linked).

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

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

#[derive(Clone, Debug, Serialize, Deserialize)]
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
    path: String,
}

impl Metrics {
    /// Opens `path`, appending when resuming, else starting it afresh.
    pub fn open(path: &Path, append: bool) -> Result<Self, String> {
        let file = OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Metrics { file, path: path.display().to_string() })
    }

    /// Opens `path` to continue a run resumed from its checkpoint at `step`. A run stopped
    /// after that checkpoint had already written lines for later steps, which this process
    /// trains again: they are dropped (as is a line cut short by a crash), so every step and
    /// every validation appears once. Returns what the kept lines say about the run's start.
    pub fn resume(path: &Path, step: usize) -> Result<(Self, RunStart), String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(e)),
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
        echo_model::weights::write_atomic(path, kept.as_bytes()).map_err(|e| e.to_string())?;
        Self::open(path, true).map(|m| (m, start))
    }

    fn line(&mut self, json: String) -> Result<(), String> {
        writeln!(self.file, "{json}").and_then(|_| self.file.flush()).map_err(|e| format!("{}: {e}", self.path))
    }

    pub fn step(&mut self, s: &StepLine) -> Result<(), String> {
        self.line(serde_json::to_string(s).expect("serialises"))
    }

    pub fn eval(&mut self, step: usize, val_loss: Option<f32>) -> Result<(), String> {
        self.line(serde_json::to_string(&EvalLine { step, val_loss }).expect("serialises"))
    }
}

/// Writes `out`, an SVG plot of the run in `metrics` (see [`render_svg`]), atomically.
pub fn plot_svg(metrics: &Path, out: &Path) -> Result<(), String> {
    let f = File::open(metrics).map_err(|e| format!("{}: {e}", metrics.display()))?;
    let mut lines = Vec::new();
    for line in BufReader::new(f).lines() {
        lines.push(line.map_err(|e| format!("{}: {e}", metrics.display()))?);
    }
    let svg = render_svg(&lines).map_err(|e| format!("{}: drawing the plot: {e}", out.display()))?;
    echo_model::weights::write_atomic(out, svg.as_bytes()).map_err(|e| e.to_string())
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

type PlotResult<T> = Result<T, String>;

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

fn drawing<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
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
        let e = plot_svg(&dir.join("missing.jsonl"), &out).unwrap_err();
        assert!(e.contains("missing.jsonl"), "{e}");
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
