//! Fuzzes the server's request parser with arbitrary bytes and checks what it
//! accepts, not only that it does not panic: a request never claims more
//! bytes than it was given, keys and values respect the limits, and parsing
//! the same bytes again with more appended gives the same first request.
#![no_main]

use data::limits::{Limits, KEY_BYTES_MAX};
use data::protocol::request::{parse_request, ParseError, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let limits = Limits { item_bytes_max: 1024 };
    match parse_request(input, &limits) {
        Ok(Some((request, consumed))) => {
            assert!(consumed > 0 && consumed <= input.len());
            match &request {
                Request::Get { keys, .. } | Request::GetAndTouch { keys, .. } => {
                    assert!(!keys.is_empty());
                    assert!(keys.iter().all(|k| !k.is_empty() && k.len() <= KEY_BYTES_MAX));
                    assert!(keys.iter().all(|k| !k.contains(&b' ') && !k.contains(&b'\n')));
                }
                Request::Store(s) => {
                    assert!(s.data.len() <= limits.item_bytes_max);
                    assert!(!s.key.is_empty() && s.key.len() <= KEY_BYTES_MAX);
                }
                _ => {}
            }
            // A complete request is not changed by what follows it.
            let mut longer = input.to_vec();
            longer.extend_from_slice(b"get more\r\n");
            let again = parse_request(&longer, &limits).expect("still parses");
            assert_eq!(again, Some((request, consumed)));
        }
        Ok(None) => {}
        Err(ParseError::Reply { consumed, .. }) | Err(ParseError::TooLarge { consumed, .. }) => {
            assert!(consumed > 0 && consumed <= input.len());
        }
        Err(ParseError::Close) | Err(ParseError::Binary { .. }) => {}
    }
});
