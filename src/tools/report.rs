//! Bench results as files and tables: results.json (the whole run),
//! results.csv (a row per point), report.html with SVG plots (plotters), and
//! the Markdown tables the README takes. Two runs go side by side with ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::bench::{level_name, Mode, Point, Run, Shape};

pub fn write_run(dir: &Path, run: &Run) -> Result<(), String> {
    let io = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(run).expect("JSON")).map_err(|e| io(&json, &e))?;
    let csv_path = dir.join("results.csv");
    let mut csv = csv::Writer::from_path(&csv_path).map_err(|e| io(&csv_path, &e))?;
    csv.write_record([
        "shape",
        "data",
        "list_size",
        "candidates_per_request",
        "mode",
        "level",
        "seconds",
        "requests",
        "errors",
        "requests_per_s",
        "candidates_per_s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p99_9_ms",
        "max_ms",
        "mean_ms",
        "checked",
        "wrong",
    ])
    .map_err(|e| io(&csv_path, &e))?;
    for p in &run.points {
        let l = &p.latency_ms;
        let mode = if p.mode == Mode::Closed { "closed" } else { "open" };
        let numbers = [p.seconds, p.requests as f64, p.errors as f64, p.rps, p.candidates_per_s, l.p50, l.p90, l.p99, l.p999, l.max, l.mean];
        let mut record =
            vec![p.shape.name().to_owned(), p.data.clone(), p.list_size.to_string(), p.candidates_per_request.to_string(), mode.into(), p.level.to_string()];
        record.extend(numbers.iter().map(|n| format!("{n:.4}")));
        record.extend([p.checked.to_string(), p.wrong.to_string()]);
        csv.write_record(&record).map_err(|e| io(&csv_path, &e))?;
    }
    csv.flush().map_err(|e| io(&csv_path, &e))
}

pub fn read_run(path: &Path) -> Result<Run, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: not a bench results.json: {e}", path.display()))
}

/// 1234567 as "1.2 M", 4 as "4", 0.25 as "0.25".
pub fn si(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2} G", x / 1e9),
        x if x >= 1e6 => format!("{:.1} M", x / 1e6),
        x if x >= 1e3 => format!("{:.1} k", x / 1e3),
        x if x >= 10.0 || x.fract() == 0.0 => format!("{x:.0}"),
        x => format!("{x:.2}"),
    }
}

fn level_header(points: &[Point]) -> &'static str {
    match points.first().map(|p| p.mode) {
        Some(Mode::Open) => "rate",
        _ => "clients",
    }
}

/// One row per point.
pub fn markdown(run: &Run) -> String {
    let mut out = format!(
        "| shape | data | {} | requests/s | candidates/s | p50 | p90 | p99 | p99.9 | errors | checked |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        level_header(&run.points)
    );
    for p in &run.points {
        let l = &p.latency_ms;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} |",
            p.shape.name(),
            p.data,
            p.level,
            thousands(p.rps),
            si(p.candidates_per_s),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            p.errors,
            p.checked
        );
    }
    out
}

fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The points both runs measured, `b` beside `a`, with ratios b / a.
pub fn comparison_markdown(a: &Run, b: &Run) -> String {
    let mut out = format!("A: {} ({})  \nB: {} ({})\n\n", a.url, a.started, b.url, b.started);
    out.push_str("| shape | data | level | requests/s A | requests/s B | B / A | p99 A | p99 B | B / A |\n|---|---|---|---|---|---|---|---|---|\n");
    for (pa, pb) in pairs(a, b) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2}x | {:.2} ms | {:.2} ms | {:.2}x |",
            pa.shape.name(),
            pa.data,
            level_name(pa.mode, pa.level),
            thousands(pa.rps),
            thousands(pb.rps),
            pb.rps / pa.rps,
            pa.latency_ms.p99,
            pb.latency_ms.p99,
            pb.latency_ms.p99 / pa.latency_ms.p99
        );
    }
    out
}

fn pairs<'a>(a: &'a Run, b: &'a Run) -> impl Iterator<Item = (&'a Point, &'a Point)> {
    a.points.iter().filter_map(|pa| b.points.iter().find(|pb| pb.key() == pa.key()).map(|pb| (pa, pb)))
}

struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: usize,
    dashed: bool,
}

/// A log-log line chart as SVG text.
fn chart(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<String, String> {
    let all = || series.iter().flat_map(|s| &s.points).filter(|(x, y)| *x > 0.0 && *y > 0.0);
    let span = |values: Vec<f64>| {
        let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        if lo > hi {
            (0.1, 10.0)
        } else {
            (lo / 1.5, hi * 1.5)
        }
    };
    let (x, y) = (span(all().map(|p| p.0).collect()), span(all().map(|p| p.1).collect()));
    // Ticks where the data are on x (clients, rates, sizes), at 1-2-5 on y.
    let mut x_ticks: Vec<f64> = super::unique(all().map(|p| p.0));
    x_ticks.sort_by(f64::total_cmp);
    let y_ticks: Vec<f64> = (y.0.log10().floor() as i32..=y.1.log10().ceil() as i32)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|v| (y.0..=y.1).contains(v))
        .collect();
    let mut svg = String::new();
    {
        let err = |e: &dyn std::fmt::Display| format!("plot {title}: {e}");
        let root = SVGBackend::with_string(&mut svg, (760, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d((x.0..x.1).log_scale().with_key_points(x_ticks), (y.0..y.1).log_scale().with_key_points(y_ticks))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| si(*v))
            .y_label_formatter(&|v| si(*v))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(|e| err(&e))?;
        for s in series.iter().filter(|s| !s.points.is_empty()) {
            let color = Palette99::pick(s.color).to_rgba();
            let style = color.stroke_width(2);
            let drawn = if s.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style))
            } else {
                chart.draw_series(LineSeries::new(s.points.clone(), style))
            };
            let dashed = s.dashed;
            drawn.map_err(|e| err(&e))?.label(s.label.clone()).legend(move |(x, y)| {
                let end = if dashed { x + 8 } else { x + 20 };
                PathElement::new(vec![(x, y), (end, y)], style)
            });
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// The plots of one or two runs: latency against clients (or rate) per
/// shape, and peak candidates/s against list size.
fn plots(runs: &[&Run]) -> Result<Vec<(String, String)>, String> {
    let tag = |i: usize| if runs.len() > 1 { format!(" ({})", ["A", "B"][i]) } else { String::new() };
    let mut out = Vec::new();
    let shapes = super::unique(runs.iter().flat_map(|r| r.points.iter().map(|p| p.shape)));
    let mode = runs.iter().flat_map(|r| &r.points).map(|p| p.mode).next().unwrap_or(Mode::Closed);
    for shape in shapes {
        let mut series = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let mut by_data: BTreeMap<&str, Vec<&Point>> = BTreeMap::new();
            for p in run.points.iter().filter(|p| p.shape == shape && p.requests > 0) {
                by_data.entry(&p.data).or_default().push(p);
            }
            for (j, (data, points)) in by_data.into_iter().enumerate() {
                let color = i * 8 + j;
                series.push(Series {
                    label: format!("{data} p99{}", tag(i)),
                    points: points.iter().map(|p| (p.level, p.latency_ms.p99)).collect(),
                    color,
                    dashed: false,
                });
                series.push(Series {
                    label: format!("{data} p50{}", tag(i)),
                    points: points.iter().map(|p| (p.level, p.latency_ms.p50)).collect(),
                    color,
                    dashed: true,
                });
            }
        }
        let (x_desc, name) = match mode {
            Mode::Closed => ("clients (closed loop)", "latency-vs-clients"),
            Mode::Open => ("requests/s sent (open loop)", "latency-vs-rate"),
        };
        let svg = chart(&format!("{}: latency", shape.name()), x_desc, "latency, ms", &series)?;
        out.push((format!("{name}-{}.svg", shape.name()), svg));
    }
    let mut series = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let mut peak: BTreeMap<(&str, &str), BTreeMap<u64, f64>> = BTreeMap::new();
        for p in run.points.iter().filter(|p| p.shape != Shape::Raw && p.requests > 0) {
            let best = peak.entry((p.shape.name(), &p.dtype)).or_default().entry(p.list_size).or_insert(0.0);
            *best = best.max(p.candidates_per_s);
        }
        for (j, ((shape, dtype), sizes)) in peak.into_iter().enumerate() {
            let points = sizes.into_iter().map(|(size, c)| (size as f64, c)).collect();
            series.push(Series { label: format!("{shape} {dtype}{}", tag(i)), points, color: i * 8 + j, dashed: i == 1 });
        }
    }
    out.push(("throughput-vs-size.svg".into(), chart("peak throughput", "faces in the list", "candidates/s", &series)?));
    Ok(out)
}

/// report.html, and each plot as an SVG file beside it.
pub fn write_report(out: &Path, runs: &[&Run]) -> Result<PathBuf, String> {
    let io = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let mut html = String::from("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>luna-matcher bench</title>\n<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} td:nth-child(-n+2){text-align:left}</style></head><body>\n<h1>luna-matcher bench</h1>\n");
    for (i, run) in runs.iter().enumerate() {
        let name = if runs.len() > 1 { ["A: ", "B: "][i] } else { "" };
        let _ = writeln!(
            html,
            "<h2>{name}{}</h2><p>{} &middot; {} &middot; {} CPUs {} &middot; <code>{}</code>{}</p>",
            escape(&run.url),
            escape(&run.started),
            escape(&run.tool),
            run.machine.cpus,
            escape(run.machine.cpu.as_deref().unwrap_or("")),
            escape(&run.command),
            if run.passed { String::new() } else { format!("<br><b>FAILED</b>: {}", escape(&run.failures.join("; "))) }
        );
        html.push_str(&table(run));
    }
    if let [a, b] = runs {
        html.push_str("<h2>B beside A</h2>");
        html.push_str(&comparison_table(a, b));
    }
    for (file, svg) in plots(runs)? {
        let path = out.join(&file);
        std::fs::write(&path, &svg).map_err(|e| io(&path, &e))?;
        let _ = writeln!(html, "<figure>{svg}<figcaption>{file}</figcaption></figure>");
    }
    html.push_str("</body></html>\n");
    let path = out.join("report.html");
    std::fs::write(&path, html).map_err(|e| io(&path, &e))?;
    Ok(path)
}

fn table(run: &Run) -> String {
    let mut out = format!(
        "<table><tr><th>shape</th><th>data</th><th>{}</th><th>requests/s</th><th>candidates/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>errors</th><th>checked</th><th>wrong</th></tr>\n",
        level_header(&run.points)
    );
    for p in &run.points {
        let l = &p.latency_ms;
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.shape.name(),
            escape(&p.data),
            p.level,
            p.rps,
            si(p.candidates_per_s),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            p.errors,
            p.checked,
            p.wrong
        );
    }
    out.push_str("</table>\n");
    out
}

fn comparison_table(a: &Run, b: &Run) -> String {
    let mut out = String::from("<table><tr><th>shape</th><th>data</th><th>level</th><th>requests/s A</th><th>requests/s B</th><th>B / A</th><th>p99 ms A</th><th>p99 ms B</th><th>B / A</th></tr>\n");
    for (pa, pb) in pairs(a, b) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.2}x</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}x</td></tr>",
            pa.shape.name(),
            escape(&pa.data),
            level_name(pa.mode, pa.level),
            pa.rps,
            pb.rps,
            pb.rps / pa.rps,
            pa.latency_ms.p99,
            pb.latency_ms.p99,
            pb.latency_ms.p99 / pa.latency_ms.p99
        );
    }
    out.push_str("</table>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
