pub mod bench;
pub mod convert;
pub mod datasets;
pub mod demo;
pub mod evaluate;
pub mod experiment;
pub mod info;
pub mod overlay;
pub mod phantoms;
pub mod segment;
pub mod train;

use std::path::Path;

use anyhow::{Result, bail};

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
