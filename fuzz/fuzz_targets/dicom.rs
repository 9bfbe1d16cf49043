//! Fuzzes the DICOM reader with arbitrary file contents: it must return an error or a volume,
//! never panic, and never allocate more than the input backs.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod file;

fuzz_target!(|data: &[u8]| {
    file::read_as("input.dcm", data);
});
