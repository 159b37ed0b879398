#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_volume::fuzzing::append_claims(data));
