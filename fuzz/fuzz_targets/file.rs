//! Shared by the reader targets: the readers take paths, so each input is written to a file
//! in one temporary folder per process (detached data files named by a header resolve
//! inside it) and read back as raw voxels, an image and a label map.

use std::path::PathBuf;
use std::sync::OnceLock;

use mtseg::io;

fn folder() -> &'static PathBuf {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER.get_or_init(|| tempfile::tempdir().expect("temporary folder").keep())
}

pub fn read_as(name: &str, data: &[u8]) {
    let path = folder().join(name);
    std::fs::write(&path, data).expect("writable temporary folder");
    if let Ok(raw) = io::read_raw(&path) {
        // Conversions must hold for whatever was accepted.
        let _ = raw.voxels.to_f32(raw.scaling);
        let _ = raw.voxels.to_labels(&path, raw.scaling);
        let _ = io::orientation::axcodes(&raw.grid.affine);
    }
}
