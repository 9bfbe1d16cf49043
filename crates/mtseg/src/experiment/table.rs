//! The paper-style results table: one row per trained network, one column per task/class
//! (mean test Dice), plus the cross-task confusion; as Markdown, CSV and a bar chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use super::RunResult;
use crate::datasets::TaskSet;
use crate::error::{Error, Result};
use crate::io::atomic;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub label: String,
    /// The run's folder under `runs/`.
    pub folder: String,
    /// Mean test Dice per column (`None`: the network did not learn that task).
    pub dice: Vec<Option<f64>>,
    /// Mean test HD95 (mm) per column.
    pub hd95_mm: Vec<Option<f64>>,
    /// Other-task voxels as a share of all foreground voxels of the test scans.
    pub confusion: Option<f64>,
    pub train_seconds: f64,
    pub iterations: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ResultsTable {
    /// `task/class` per column.
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Row>,
}

impl ResultsTable {
    pub fn new(set: &TaskSet, results: &[RunResult]) -> Self {
        let columns: Vec<(String, String)> = set
            .tasks
            .iter()
            .flat_map(|t| {
                t.classes
                    .iter()
                    .map(move |(c, _)| (t.name.clone(), c.clone()))
            })
            .collect();
        let rows = results
            .iter()
            .map(|r| {
                let stat = |task: &str, class: &str| {
                    r.evaluation
                        .classes
                        .iter()
                        .find(|s| s.task == task && s.class.name == class)
                };
                let (other, foreground) = r
                    .evaluation
                    .cases
                    .iter()
                    .filter_map(|c| c.confusion.as_ref())
                    .fold((0usize, 0usize), |(o, f), c| {
                        (o + c.other_task_voxels(), f + c.foreground_voxels)
                    });
                Row {
                    label: r.label.clone(),
                    folder: r
                        .folder
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    dice: columns
                        .iter()
                        .map(|(t, c)| stat(t, c).and_then(|s| s.dice.mean))
                        .collect(),
                    hd95_mm: columns
                        .iter()
                        .map(|(t, c)| stat(t, c).and_then(|s| s.hd95_mm.mean))
                        .collect(),
                    confusion: (foreground > 0).then(|| other as f64 / foreground as f64),
                    train_seconds: r.train_seconds,
                    iterations: r.iterations,
                }
            })
            .collect();
        ResultsTable { columns, rows }
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let header: Vec<String> = self
            .columns
            .iter()
            .map(|(t, c)| format!("{t}<br>{c}"))
            .collect();
        let _ = writeln!(
            md,
            "| network trained on | {} | cross-task confusion | training |",
            header.join(" | ")
        );
        let _ = writeln!(md, "|---|{}---|---|", "---|".repeat(self.columns.len()));
        for row in &self.rows {
            let cells: Vec<String> = row
                .dice
                .iter()
                .map(|d| d.map_or("".to_string(), |d| format!("{d:.3}")))
                .collect();
            let confusion = row
                .confusion
                .map_or("".to_string(), |c| format!("{:.3}%", 100.0 * c));
            let _ = writeln!(
                md,
                "| {} | {} | {confusion} | {} it, {:.0} s |",
                row.label,
                cells.join(" | "),
                row.iterations,
                row.train_seconds
            );
        }
        md.push_str("\nMean Dice on the test cases (no task given at segmentation: each network labels every voxel with any class it knows). Cross-task confusion: voxels given a class of another task, as a share of all voxels given a foreground class.\n");
        let _ = writeln!(
            md,
            "\n| network trained on | {} |\n|---|{}",
            header.join(" | "),
            "---|".repeat(self.columns.len())
        );
        for row in &self.rows {
            let cells: Vec<String> = row
                .hd95_mm
                .iter()
                .map(|d| d.map_or("".to_string(), |d| format!("{d:.1}")))
                .collect();
            let _ = writeln!(md, "| {} | {} |", row.label, cells.join(" | "));
        }
        md.push_str("\nMean 95th-percentile Hausdorff distance in mm on the test cases (empty where no case has both a reference and a predicted structure).\n");
        md
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from("network");
        for (t, c) in &self.columns {
            let _ = write!(out, ",dice:{t}/{c}");
        }
        for (t, c) in &self.columns {
            let _ = write!(out, ",hd95_mm:{t}/{c}");
        }
        out.push_str(",confusion_share_of_foreground,iterations,train_seconds\n");
        let opt = |v: &Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
        for row in &self.rows {
            out.push_str(&format!("\"{}\"", row.label));
            for d in row.dice.iter().chain(&row.hd95_mm) {
                let _ = write!(out, ",{}", opt(d));
            }
            let _ = writeln!(
                out,
                ",{},{},{:.1}",
                opt(&row.confusion),
                row.iterations,
                row.train_seconds
            );
        }
        out
    }

    /// Grouped bars: one group per task/class, one bar per network that learned it. Each group
    /// is named under the axis (its class, and its task under each run of the task's groups);
    /// the legend sits in headroom above Dice 1, clear of every bar.
    fn draw(&self, path: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let groups = self.columns.len();
        let bars = self.rows.len();
        let width = (150 * groups as u32 + 80).max(640);
        let root = BitMapBackend::new(path, (width, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        // Room for the legend: a title row and a row per network, as a share of the axis.
        let top = 1.0 + 0.08 * (bars + 1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "test Dice per task/class and training configuration",
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(CLASS_LINES as u32 * LINE + LINE + 16)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..groups as f64, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&|y| {
                if *y <= 1.0 + 1e-9 {
                    format!("{y:.1}")
                } else {
                    String::new()
                }
            })
            .y_desc("Dice")
            .draw()?;
        let slot = 0.8 / bars.max(1) as f64;
        for (r, row) in self.rows.iter().enumerate() {
            let c = crate::report::overlay::label_colour(r as u16 + 1);
            let colour = RGBColor(c[0], c[1], c[2]);
            chart
                .draw_series(row.dice.iter().enumerate().filter_map(|(g, d)| {
                    d.map(|d| {
                        let x0 = g as f64 + 0.1 + r as f64 * slot;
                        Rectangle::new([(x0, 0.0), (x0 + slot * 0.9, d)], colour.filled())
                    })
                }))?
                .label(row.label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        // The group names, in the label area under the axis.
        let centred = |size: u32| {
            ("sans-serif", size)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top))
        };
        let below = |x: f64, line: u32| {
            let (px, py) = chart.backend_coord(&(x, 0.0));
            (px, py + 6 + (line * LINE) as i32)
        };
        for (g, (_, class)) in self.columns.iter().enumerate() {
            for (line, text) in wrapped(&class.replace('_', " "), 18).iter().enumerate() {
                root.draw(&Text::new(
                    text.clone(),
                    below(g as f64 + 0.5, line as u32),
                    centred(13),
                ))?;
            }
        }
        let mut first = 0;
        while first < groups {
            let task = &self.columns[first].0;
            let end = first
                + self.columns[first..]
                    .iter()
                    .take_while(|(t, _)| t == task)
                    .count();
            root.draw(&Text::new(
                task.clone(),
                below((first + end) as f64 / 2.0, CLASS_LINES as u32),
                centred(14),
            ))?;
            first = end;
        }
        root.present()?;
        Ok(())
    }

    /// Writes `results.md`, `results.csv`, `results.json` and `results.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        atomic::write_bytes(&dir.join("results.md"), self.to_markdown().as_bytes())?;
        atomic::write_bytes(&dir.join("results.csv"), self.to_csv().as_bytes())?;
        atomic::write_json(&dir.join("results.json"), self)?;
        crate::report::fonts::register();
        let png = dir.join("results.png");
        atomic::write_with(&png, |temp| {
            self.draw(temp)
                .map_err(|e| Error::invalid(&png, format!("cannot draw the chart: {e}")))
        })
    }
}

/// Lines of a class name under its group, and their height in pixels.
const CLASS_LINES: usize = 3;
const LINE: u32 = 15;

/// `text` in lines of at most `width` characters where it has spaces (a longer word keeps
/// its own line), at most [`CLASS_LINES`] of them.
fn wrapped(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines.truncate(CLASS_LINES);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ResultsTable {
        let row = |label: &str, dice: [Option<f64>; 2], hd: [Option<f64>; 2]| Row {
            label: label.into(),
            folder: label.into(),
            dice: dice.to_vec(),
            hd95_mm: hd.to_vec(),
            confusion: Some(0.0125),
            train_seconds: 61.2,
            iterations: 400,
        };
        ResultsTable {
            columns: vec![
                ("Brain".into(), "wm".into()),
                ("Hippo".into(), "anterior".into()),
            ],
            rows: vec![
                row("Brain", [Some(0.9), None], [Some(2.5), None]),
                row(
                    "Brain + Hippo",
                    [Some(0.875), Some(0.8)],
                    [Some(3.0), Some(1.25)],
                ),
            ],
        }
    }

    #[test]
    fn class_names_wrap_at_spaces() {
        assert_eq!(
            wrapped("cortical grey matter", 18),
            ["cortical grey", "matter"]
        );
        assert_eq!(wrapped("coronary arteries", 18), ["coronary arteries"]);
        assert_eq!(wrapped("a b c d", 1), ["a", "b", "c"]);
    }

    /// Every group is named under the axis: dark pixels under each group's centre.
    #[test]
    fn the_chart_names_every_group() {
        let dir = tempfile::tempdir().unwrap();
        crate::report::fonts::register();
        table().write(dir.path()).unwrap();
        let png = image::open(dir.path().join("results.png"))
            .unwrap()
            .to_luma8();
        let (w, h) = png.dimensions();
        // The plot spans the width less the y label area and the margins; the groups split
        // it evenly. The x axis is the lowest row dark across most of the plot; under it,
        // past the tick marks, each group's name is dark pixels on several rows.
        let (left, right) = (10 + 45, w - 10);
        let dark = |x: u32, y: u32| png.get_pixel(x, y).0[0] < 100;
        let axis = (0..h)
            .rev()
            .find(|&y| (left..right).filter(|&x| dark(x, y)).count() > (right - left) as usize / 2)
            .expect("an x axis");
        for g in 0..2 {
            let centre = left + (right - left) * (2 * g + 1) / 4;
            let rows = (axis + 8..h)
                .filter(|&y| (centre - 20..centre + 20).any(|x| dark(x, y)))
                .count();
            assert!(rows >= 5, "group {g}: {rows} rows of text under it");
        }
    }

    #[test]
    fn markdown_has_dice_and_hd95_tables_with_blanks_for_untrained_tasks() {
        let md = table().to_markdown();
        assert!(
            md.contains("| Brain | 0.900 |  | 1.250% | 400 it, 61 s |"),
            "{md}"
        );
        assert!(md.contains("| Brain + Hippo | 0.875 | 0.800 |"), "{md}");
        assert!(md.contains("| Brain | 2.5 |  |"), "{md}");
        assert!(md.contains("| Brain + Hippo | 3.0 | 1.2 |"), "{md}");
    }

    #[test]
    fn csv_has_one_line_per_network() {
        let csv = table().to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("network,dice:Brain/wm,dice:Hippo/anterior,hd95_mm:Brain/wm"));
        assert!(
            lines[1].starts_with("\"Brain\",0.9000,,2.5000,,"),
            "{}",
            lines[1]
        );
    }
}
