//! `mtseg datasets check DIR...`: validate nnU-Net datasets and show the joint label space.

use std::path::PathBuf;

use anyhow::Result;
use mtseg::datasets::{Splits, TaskSet};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Read every case of the given nnU-Net raw datasets, check it (label map for every
    /// image, same grid, label values listed in dataset.json), and print the joint label
    /// space the datasets form together.
    Check {
        /// Dataset folders (each with dataset.json, imagesTr/, labelsTr/).
        #[arg(required = true)]
        folders: Vec<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> Result<()> {
    let Command::Check { folders, json } = command;
    let set = TaskSet::open(&folders)?;
    let mut report = Vec::new();
    for task in &set.tasks {
        let bar = crate::progress::bar((task.training.len() + task.test.len()) as u64, &task.name);
        let cases = task.check()?;
        bar.finish_and_clear();
        let split = Splits::find_for(task)?.split_for(task)?;
        if !json {
            println!(
                "{}  ({:?}, {} labelled cases, {} unlabelled; split {} train / {} test)",
                task.name,
                task.modality,
                task.training.len(),
                task.test.iter().filter(|c| !c.is_labelled()).count(),
                split.train.len(),
                split.test.len()
            );
            for case in &cases {
                let [nx, ny, nz] = case.shape;
                let [sx, sy, sz] = case.spacing;
                println!(
                    "  {:<24} {nx}x{ny}x{nz}  {sx:.2}x{sy:.2}x{sz:.2} mm  {}  labels {:?}",
                    case.id,
                    case.axcodes.iter().collect::<String>(),
                    case.labels.as_deref().unwrap_or(&[])
                );
            }
        }
        report.push(serde_json::json!({
            "task": task.name, "folder": task.folder, "modality": task.modality,
            "cases": cases, "split": split,
        }));
    }
    let classes: Vec<String> = (0..set.space.num_classes() as u16)
        .map(|j| set.space.joint_name(j))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"tasks": report, "label_space": classes})
            )?
        );
    } else {
        println!("joint label space ({} outputs):", classes.len());
        for (j, name) in classes.iter().enumerate() {
            println!("  {j:>3}  {name}");
        }
    }
    Ok(())
}
