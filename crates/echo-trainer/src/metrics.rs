//! The metrics JSONL (one line per optimizer step, one per evaluation) and an SVG plot of the
//! loss curves drawn from it (no plotting dependency: the SVG is a few polylines).

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

/// Draws train loss, plain CE, echo CE and validation loss against the step.
pub fn plot_svg(metrics: &Path, out: &Path) -> Result<(), String> {
    let f = File::open(metrics).map_err(|e| format!("{}: {e}", metrics.display()))?;
    let mut series: [(&str, &str, Vec<(f64, f64)>); 4] = [
        ("train loss", "#1f77b4", vec![]),
        ("CE plain route (/N)", "#2ca02c", vec![]),
        ("CE echo route (/N)", "#d62728", vec![]),
        ("validation loss", "#ff7f0e", vec![]),
    ];
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| format!("{}: {e}", metrics.display()))?;
        if let Ok(s) = serde_json::from_str::<StepLine>(&line) {
            let x = s.step as f64;
            series[0].2.push((x, s.loss as f64));
            series[1].2.push((x, s.ce_plain as f64));
            if s.ce_echo > 0.0 {
                series[2].2.push((x, s.ce_echo as f64));
            }
        } else if let Ok(EvalLine { step, val_loss: Some(v) }) = serde_json::from_str::<EvalLine>(&line) {
            series[3].2.push((step as f64, v as f64));
        }
    }
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let (w, h, m) = (720.0, 420.0, 50.0);
    let sx = |x: f64| m + (x - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * m);
    let sy = |y: f64| h - m - (y - y0) / (y1 - y0).max(1e-9) * (h - 2.0 * m);
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    svg += &format!("<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n", h - m, w - m, h - m, h - m);
    svg += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step ({x0:.0} to {x1:.0})</text>\n",
        w / 2.0,
        h - 15.0
    );
    svg += &format!("<text x=\"5\" y=\"{}\">{y1:.3}</text><text x=\"5\" y=\"{}\">{y0:.3}</text>\n", m, h - m);
    for (i, (name, color, p)) in series.iter().enumerate() {
        if p.is_empty() {
            continue;
        }
        let path: Vec<String> =
            p.iter().filter(|(_, y)| y.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            path.join(" ")
        );
        svg += &format!("<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>\n", w - m - 170.0, m + 15.0 * i as f64);
    }
    svg += "</svg>\n";
    echo_model::weights::write_atomic(out, svg.as_bytes()).map_err(|e| e.to_string())
}
