//! `mtseg convert IN OUT`: any readable volume to NIfTI, voxels and geometry kept.

use std::path::PathBuf;

use anyhow::Result;
use mtseg::io;

/// Convert a volume (NIfTI, NRRD, MetaImage) to NIfTI (.nii or .nii.gz), keeping voxel type,
/// values and world geometry.
#[derive(clap::Args)]
pub struct Args {
    /// The volume to read (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd).
    input: PathBuf,
    /// The NIfTI file to write (.nii or .nii.gz); never the input.
    output: PathBuf,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: Args) -> Result<()> {
    super::check_output(&args.input, &args.output, args.overwrite)?;
    let volume = io::read_raw(&args.input)?;
    io::write_raw(&args.output, &volume)?;
    if !crate::progress::is_quiet() {
        eprintln!("wrote {}", args.output.display());
    }
    Ok(())
}
