//! `mtseg overlay`: a picture of a segmentation.

use std::path::PathBuf;

use anyhow::Result;
use mtseg::datasets::check_same_grid;
use mtseg::io;
use mtseg::report::overlay::overlay_png;

/// Draw three orthogonal slices through the centre of the segmented foreground, label map
/// over the image, in the radiological convention (patient's right on the left).
#[derive(clap::Args)]
pub struct Args {
    /// The image.
    #[arg(short, long)]
    input: PathBuf,
    /// The label map on the image's grid.
    #[arg(short, long)]
    segmentation: PathBuf,
    /// The PNG to write.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let image = io::read_image(&args.input)?;
    let labels = io::read_labels(&args.segmentation)?;
    check_same_grid(&args.segmentation, &labels.grid, &image.grid)?;
    overlay_png(&image, Some(&labels), &args.output)?;
    println!("wrote {}", args.output.display());
    Ok(())
}
