pub mod bench;
pub mod convert;
pub mod datasets;
pub mod demo;
pub mod evaluate;
pub mod experiment;
pub mod info;
pub mod overlay;
pub mod phantoms;
pub mod robustness;
pub mod segment;
pub mod train;

use std::path::Path;

use anyhow::{Result, bail};
use mtseg::device::Hardware;

/// `--device cpu|gpu`: where the network runs.
#[derive(Clone, Copy, Default, clap::ValueEnum)]
pub enum DeviceArg {
    /// mtseg's own CPU kernels, on every core.
    #[default]
    Cpu,
    /// A GPU through burn's wgpu backend (Vulkan, Metal or DX12; builds with `--features gpu`).
    Gpu,
}

impl From<DeviceArg> for Hardware {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => Hardware::Cpu,
            DeviceArg::Gpu => Hardware::Gpu,
        }
    }
}

/// Outputs never replace an input, and replace an existing file only when asked.
pub fn check_output(input: &Path, output: &Path, overwrite: bool) -> Result<()> {
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize())
        && a == b
    {
        bail!("{}: refusing to write over the input", output.display());
    }
    if output.exists() && !overwrite {
        bail!(
            "{}: exists; give --overwrite to replace it",
            output.display()
        );
    }
    Ok(())
}
