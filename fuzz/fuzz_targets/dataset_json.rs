//! Fuzzes the nnU-Net dataset.json loader: arbitrary text as dataset.json in a dataset
//! folder with one valid image/label pair.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtseg::datasets::Task;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary folder");
    let folder = dir.path().join("Dataset001_Fuzz");
    std::fs::create_dir_all(folder.join("imagesTr")).expect("writable");
    std::fs::create_dir_all(folder.join("labelsTr")).expect("writable");
    std::fs::write(folder.join("imagesTr/a_0000.nii.gz"), b"").expect("writable");
    std::fs::write(folder.join("labelsTr/a.nii.gz"), b"").expect("writable");
    std::fs::write(folder.join("dataset.json"), data).expect("writable");
    if let Ok(task) = Task::open(&folder) {
        let _ = task.allowed_ids();
        let _ = task.check();
    }
});
