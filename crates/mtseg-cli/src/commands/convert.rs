//! `mtseg convert IN OUT`: any readable volume to NIfTI, voxels and geometry kept.

use std::path::PathBuf;

use anyhow::Result;
use mtseg::io;

/// Convert a volume (NIfTI, NRRD, MetaImage, a DICOM series) to NIfTI (.nii or .nii.gz),
/// keeping voxel type, values and world geometry; a 4-D input stays 4-D unless `--volume`
/// picks one volume.
#[derive(clap::Args)]
pub struct Args {
    /// The volume to read (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd), or a DICOM file or folder
    /// holding one series.
    input: PathBuf,
    /// The NIfTI file to write (.nii or .nii.gz); never the input.
    output: PathBuf,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Of a 4-D input, write only its volume K (counted from 0) as a 3-D file (default: all of
    /// them, as a 4-D file).
    #[arg(long, value_name = "K")]
    volume: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    super::check_output(&args.input, &args.output, args.overwrite)?;
    let mut volume = io::read_raw(&args.input)?;
    if let Some(k) = args.volume {
        volume = volume.volume(&args.input, k)?;
    }
    io::write_raw(&args.output, &volume)?;
    if !crate::progress::is_quiet() {
        eprintln!("wrote {}", args.output.display());
    }
    Ok(())
}
