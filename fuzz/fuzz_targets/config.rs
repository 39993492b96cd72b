// Fuzzes image config parsing: diff_ids and platform (oci_cache::fuzzing::config).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oci_cache::fuzzing::config(data);
});
