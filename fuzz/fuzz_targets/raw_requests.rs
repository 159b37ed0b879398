#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_proto::fuzzing::raw_requests(data));
