//! Shared by the reader targets: the readers take paths, so each input is written to a
//! file in a fresh temporary folder (detached data files named by a header resolve inside
//! it) and read back as an image and as a label map.

use mtseg::io;

pub fn read_as(name: &str, data: &[u8]) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join(name);
    std::fs::write(&path, data).expect("writable temporary folder");
    if let Ok(raw) = io::read_raw(&path) {
        // Conversions must hold for whatever was accepted.
        let _ = raw.voxels.to_f32(raw.scaling);
        let _ = raw.voxels.to_labels(&path, raw.scaling);
        let _ = io::orientation::axcodes(&raw.grid.affine);
    }
}
