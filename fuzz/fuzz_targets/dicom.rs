//! Fuzzes the DICOM reader with arbitrary file contents: it must return an error or a volume,
//! never panic, and never allocate more than the input backs.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};

use libfuzzer_sys::fuzz_target;

mod file;

/// Any single allocation above this aborts the run. libFuzzer's own out-of-memory check
/// samples the resident memory from another thread and can report the wrong input (an
/// empty one); an abort inside the allocation keeps the input that asked for it.
const LIMIT: usize = 64 << 20;

struct Bounded;

// SAFETY: every call is passed to the system allocator unchanged, or the process aborts.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            std::process::abort();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            std::process::abort();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT {
            std::process::abort();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

fuzz_target!(|data: &[u8]| {
    file::read_as("input.dcm", data);
});
