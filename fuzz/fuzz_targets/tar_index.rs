// Fuzzes the incremental tar parser and the tar index built from it
// (oci_cache::fuzzing::tar_index).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oci_cache::fuzzing::tar_index(data);
});
