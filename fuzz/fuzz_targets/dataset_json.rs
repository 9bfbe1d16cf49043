//! Fuzzes the nnU-Net dataset.json loader: arbitrary text as dataset.json in a dataset
//! folder with one (empty) image/label pair, then the full check of the dataset.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mtseg::datasets::Task;

fn folder() -> &'static PathBuf {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let folder = tempfile::tempdir().expect("temporary folder").keep().join("Dataset001_Fuzz");
        std::fs::create_dir_all(folder.join("imagesTr")).expect("writable");
        std::fs::create_dir_all(folder.join("labelsTr")).expect("writable");
        std::fs::write(folder.join("imagesTr/a_0000.nii.gz"), b"").expect("writable");
        std::fs::write(folder.join("labelsTr/a.nii.gz"), b"").expect("writable");
        folder
    })
}

fuzz_target!(|data: &[u8]| {
    let folder = folder();
    std::fs::write(folder.join("dataset.json"), data).expect("writable");
    if let Ok(task) = Task::open(folder) {
        let _ = task.allowed_ids();
        let _ = task.check();
    }
});
